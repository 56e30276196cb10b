"""Typed configuration: the training config, method configs, presets and --set overrides.

Two dataclasses describe a run: `TrainConfig` (data, budget, precision, intervals: the loop's
business) and the method's own config dataclass (networks and loss weights). Both validate in
``__post_init__`` with messages that name the option and the allowed range; unknown keys are
errors. Budgets are counted in images seen (kimg) so presets survive batch-size changes.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from .registry import PRESETS, TINY


class ConfigError(ValueError):
    """A user-facing configuration problem; the CLI prints it on one line and exits 2."""


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def check_choice(name: str, value: Any, choices) -> None:
    check(value in choices, f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


def check_range(name: str, value: float, lo: float | None = None, hi: float | None = None,
                lo_open: bool = False) -> None:
    ok = True
    if lo is not None:
        ok &= value > lo if lo_open else value >= lo
    if hi is not None:
        ok &= value <= hi
    if not ok:
        lo_s = "" if lo is None else (f"> {lo}" if lo_open else f">= {lo}")
        hi_s = "" if hi is None else f"<= {hi}"
        check(False, f"{name} must be {' and '.join(s for s in (lo_s, hi_s) if s)}; got {value}")


@dataclass
class TrainConfig:
    method: str = "vae"
    data: str = "fractals"
    resolution: int | None = None  # None: the source's default (fractals 64, mnist 28, digits 16)
    channels: int | None = None  # None: the source's default
    n_data: int | None = None  # size of procedural data; a limit for folders
    fit: str = "crop"  # non-square images: crop | pad | stretch
    download: bool = False  # mnist:DIR only
    kimg: float = 50.0  # training budget in thousands of images seen
    epochs: float | None = None  # convenience: converted to kimg from the dataset size
    batch_size: int = 32
    seed: int = 0
    precision: str = "auto"  # auto | bf16 | fp32
    device: str = "auto"  # auto | cpu | cuda
    log_every_kimg: float = 0.5
    sample_every_kimg: float = 5.0
    snapshot_every_kimg: float = 10.0
    metrics: str = ""  # comma-separated metric names evaluated at metrics_every_kimg
    metrics_every_kimg: float = 0.0
    metrics_n: int = 1000
    grad_clip: float = 0.0  # 0: off
    lr_decay_kimg: tuple[float, ...] = ()  # milestones (kimg): every optimizer's lr is multiplied by lr_decay at each
    lr_decay: float = 0.1  # the factor applied at each milestone of lr_decay_kimg
    max_bad_steps: int = 20  # consecutive non-finite steps before the run stops
    prefetch: int = 4  # batches prepared ahead by the data thread
    threads: int = 0  # torch CPU threads; 0: torch's default (one per core)
    init_from: str = ""  # a run folder or snapshot whose networks start this run (not re-applied on resume)
    init_nets: tuple[str, ...] = ()  # which networks init_from copies; empty: every network both runs have
    # numbered snapshots: None keeps only the latest (snapshot.safetensors); N >= 1 also keeps the N newest
    # checkpoints as snapshots/snapshot-<images>.safetensors; 0 keeps every one (see checkpoint.keep_history)
    keep: int | None = None

    def __post_init__(self):
        check_range("--kimg", self.kimg, 0, 1e9, lo_open=True)  # 1e12 images: more is a typo, and overflows
        if self.epochs is not None:
            check_range("--epochs", self.epochs, 0, 1e6, lo_open=True)
        check_range("--batch-size", self.batch_size, 1, 65536)
        check_choice("--precision", self.precision, ("auto", "bf16", "fp32"))
        check_choice("--device", self.device, ("auto", "cpu", "cuda"))
        check_choice("fit", self.fit, ("crop", "pad", "stretch"))
        if self.resolution is not None:
            check_range("--resolution", self.resolution, 4, 1024)
        if self.channels is not None:
            check_choice("--channels", self.channels, (1, 3))
        for k in ("log_every_kimg", "sample_every_kimg", "snapshot_every_kimg", "metrics_every_kimg"):
            check_range(k, getattr(self, k), 0)
        check_range("max_bad_steps", self.max_bad_steps, 1)
        check_range("prefetch", self.prefetch, 1, 64)
        check_range("--threads", self.threads, 0, 1024)
        if isinstance(self.lr_decay_kimg, (int, float)):
            self.lr_decay_kimg = (self.lr_decay_kimg,)
        check(all(isinstance(m, (int, float)) and m > 0 for m in self.lr_decay_kimg),
              f"lr_decay_kimg must be positive kimg milestones, e.g. --set lr_decay_kimg=[5120,7680]; "
              f"got {self.lr_decay_kimg!r}")
        self.lr_decay_kimg = tuple(sorted(float(m) for m in self.lr_decay_kimg))
        check_range("lr_decay", self.lr_decay, 0, 1, lo_open=True)
        if isinstance(self.init_nets, str):
            self.init_nets = tuple(n.strip() for n in self.init_nets.split(",") if n.strip())
        self.init_nets = tuple(self.init_nets)
        check(not self.init_nets or bool(self.init_from), "--init-nets needs --init-from RUN")
        if self.keep is not None:
            check_range("--keep", self.keep, 0, 1_000_000)


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def from_dict(cls, d: dict, what: str = "config"):
    """Build a dataclass from a dict; unknown keys are an error that lists the known ones."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    check(not unknown, f"unknown {what} key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    kw = {}
    for f in fields(cls):
        if f.name in d:
            v = d[f.name]
            if isinstance(v, list) and "tuple" in str(f.type):
                v = tuple(v)
            _check_type(f.name, v, str(f.type), what)
            kw[f.name] = v
    try:
        return cls(**kw)
    except TypeError as e:
        raise ConfigError(f"bad {what}: {e}") from None


_SCALARS = {"int": "a whole number", "float": "a finite number", "str": "a string", "bool": "true or false"}


def _check_type(name: str, v: Any, type_str: str, what: str) -> None:
    """Values of scalar fields (int, float, str, bool, optionally None) have that type: a
    ``--set batch_size=1.5`` or ``--set seed=abc`` is a one-line error before anything runs."""
    import math

    parts = [t.strip() for t in type_str.split("|")]
    if not parts or any(t not in _SCALARS and t != "None" for t in parts):
        return  # tuples, dicts, ...: checked by the class itself
    if v is None and "None" in parts:
        return
    ok = (("int" in parts and isinstance(v, int) and not isinstance(v, bool))
          or ("float" in parts and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
          or ("str" in parts and isinstance(v, str))
          or ("bool" in parts and isinstance(v, bool)))
    if not ok:
        want = " or ".join(_SCALARS[t] for t in parts if t in _SCALARS)
        check(False, f"{what}: {name} must be {want}; got {v!r}")


def parse_value(text: str) -> Any:
    """--set values: JSON when it parses (numbers, true/false, lists), else the raw string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(train: dict, model: dict, model_cls, sets: list[str]) -> None:
    """Apply --set KEY=VALUE (or model.KEY / train.KEY) to the two config dicts in place."""
    model_keys = {f.name for f in fields(model_cls)}
    train_keys = {f.name for f in fields(TrainConfig)}
    for item in sets:
        key, sep, val = item.partition("=")
        check(bool(sep) and bool(key), f"--set expects KEY=VALUE, got {item!r}")
        scope, dot, name = key.partition(".")
        if dot and scope in ("model", "train"):
            target = model if scope == "model" else train
            known = model_keys if scope == "model" else train_keys
        else:
            name = key
            target, known = (model, model_keys) if key in model_keys else (train, train_keys)
        check(name in known, f"--set: unknown key {key!r}; method keys: {', '.join(sorted(model_keys))}")
        check(not (target is train and name == "method"),
              f"--set {item}: the method is train's first argument, not a key; run `calae train {val} ...`")
        target[name] = parse_value(val)


def preset(name: str) -> dict:
    check(name in PRESETS, f"unknown preset {name!r}; see `calae list` (known: {', '.join(sorted(PRESETS))})")
    return PRESETS[name]


def add_tiny(method: str, model: dict, train: dict | None = None) -> None:
    """The smallest networks of a method, declared next to its presets: what the contract tests and
    benchmarks' smoke runs build (a method without one fails the contract tests)."""
    TINY[method] = {"model": dict(model), "train": dict(train or {})}


def tiny(method: str) -> dict:
    """``{"model": ..., "train": ...}`` overrides that make ``method`` tiny (see ``add_tiny``)."""
    check(method in TINY, f"method {method!r} declares no tiny test config (add_tiny next to its presets)")
    return {"model": dict(TINY[method]["model"]), "train": dict(TINY[method]["train"])}


def add_preset(name: str, method: str, doc: str, train: dict | None = None, model: dict | None = None,
               default_for_data: bool = False):
    """One row per preset: method, a one-line description, training and model overrides. With
    ``default_for_data`` the preset is also what ``calae train METHOD --data SPEC`` uses when no
    --preset is given and SPEC is the preset's data (the paper's toy settings for ``toy:NAME``)."""
    PRESETS[name] = {"method": method, "doc": doc, "train": dict(train or {}), "model": dict(model or {}),
                     "default_for_data": bool(default_for_data)}


def preset_for_data(method: str, data: str | None) -> str | None:
    """The preset declared as ``method``'s default for the data spec ``data``, or None."""
    for name, pr in PRESETS.items():
        if pr.get("default_for_data") and pr["method"] == method and pr["train"].get("data") == data:
            return name
    return None


@dataclass
class MethodConfig:
    """Base of every method's config: the Adam learning rate and betas every method has."""

    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self):
        check_range("lr", self.lr, 0, 1, lo_open=True)
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
              f"betas must be two numbers in [0, 1); got {self.betas}")


@dataclass
class NetConfig:
    """The encoder / decoder network options every method's config shares, declared and validated
    once here (issue 12 §1), so that "same architecture" is one equality check:
    ``a.net_config() == b.net_config()``.

    A method config inherits it next to MethodConfig (``class VAEConfig(NetConfig, MethodConfig)``);
    the field names stay flat, so ``--set hidden=512`` and presets work unchanged. A subclass may
    redeclare a field only to change its default, and narrows ``ARCHS`` to the architectures it
    builds; ``UNUSED`` names the options its networks ignore, which must then keep their default
    (a silently ignored ``--set norm=batch`` would be a lie).
    """

    arch: str = "auto"  # auto: chosen from the data (see each method) | one of ARCHS
    hidden: int = 256  # mlp width
    depth: int = 3  # mlp hidden layers (Linear + activation each, then a linear output layer)
    act: str = "lrelu"  # mlp hidden activation: lrelu (slope 0.2) | relu (official Soft-IntroVAE 2-D nets)
    base_channels: int = 32  # conv / style feature maps at full resolution, doubling per halving
    max_channels: int = 256
    # Residual-block normalisation: group (per image: training and inference agree at any batch
    # size; see calae.nets.conv), batch (the official Soft-IntroVAE's; train/eval differ at small
    # batches) or none.
    norm: str = "group"
    # conv nets' first layer: auto (strided for one-channel images of at most 32 px, else full) |
    # full (5x5 conv at full resolution) | strided (4x4 stride-2 conv in, 4x4 stride-2 transposed
    # conv out: about a quarter of the FLOPs) | strided4 (two of each: the levels start at R/4; for
    # 256 px on a CPU); see calae.nets.conv.resolve_stem. A run's
    # config.json holds the resolved choice; one from before this option means "full".
    stem: str = "auto"

    ARCHS: ClassVar[tuple[str, ...]] = ("auto", "conv", "mlp", "style")
    STEMS: ClassVar[tuple[str, ...]] = ("auto", "full", "strided", "strided4")
    ACTS: ClassVar[tuple[str, ...]] = ("lrelu", "relu")
    UNUSED: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        parent = getattr(super(), "__post_init__", None)  # cooperative: MethodConfig's checks too
        if parent is not None:
            parent()
        from .nets.conv import norm_name

        check_choice("arch", self.arch, self.ARCHS)
        check(isinstance(self.hidden, int) and not isinstance(self.hidden, bool),
              f"hidden must be an integer; got {self.hidden!r}")
        check_range("hidden", self.hidden, 1, 65536)
        check(isinstance(self.depth, int) and not isinstance(self.depth, bool),
              f"depth must be an integer; got {self.depth!r}")
        check_range("depth", self.depth, 0, 64)
        check_choice("act", self.act, self.ACTS)
        check_choice("stem", self.stem, self.STEMS)
        check_range("base_channels", self.base_channels, 1, 4096)
        check_range("max_channels", self.max_channels, 1, 4096)
        try:
            self.norm = norm_name(self.norm)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        name = type(self).__name__.removesuffix("Config")
        for k in self.UNUSED:
            default = next(f.default for f in fields(NetConfig) if f.name == k)
            check(getattr(self, k) == default, f"{k} does not apply to the networks of {name}; "
                  f"leave it at {default!r} (got {getattr(self, k)!r})")

    @classmethod
    def upgrade_saved(cls, model: dict) -> dict:
        """A model config saved before ``stem`` existed (it holds every other network field)
        built its conv nets with the full-resolution stem: say so, so it rebuilds the same nets."""
        if (isinstance(model, dict) and "stem" not in model and "base_channels" in model and "norm" in model
                and "stem" not in cls.UNUSED):
            return {**model, "stem": "full"}
        return model

    def resolve_stem(self, info) -> None:
        """Replace ``stem=auto`` by the choice for this data (what config.json records)."""
        from .nets.conv import resolve_stem

        if self.stem == "auto" and "stem" not in self.UNUSED and getattr(info, "kind", "image") == "image":
            self.stem = resolve_stem("auto", info.channels, info.resolution)

    def net_config(self) -> "NetConfig":
        """The network part of this config as a plain NetConfig (equal iff the networks' options are)."""
        return NetConfig(**{f.name: getattr(self, f.name) for f in fields(NetConfig)})


__all__ = ["TrainConfig", "MethodConfig", "NetConfig", "ConfigError", "check", "check_choice", "check_range",
           "to_dict", "from_dict", "apply_overrides", "preset", "add_preset", "add_tiny", "tiny", "parse_value", "field"]
