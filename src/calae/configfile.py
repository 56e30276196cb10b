"""``calae train --config FILE``: the settings of a run from a JSON or YAML file.

A file holds either

- flat keys, named like the options of ``calae train`` (``batch_size`` or ``batch-size``, ``kimg``,
  ``data``, ``lr``, ``preset``, ``out``, ``keep``, ...) or like the keys ``--set`` takes (any field of
  the training config or of the method's config), plus ``method`` and ``set: [KEY=VALUE, ...]``; or
- a run's own ``config.json``: its ``method``, ``train`` and ``model`` sections (its ``info``,
  ``precision``, ``threads`` and ``world_size`` record what the run found and chose, and are not
  settings), so ``calae train --config runs/a/config.json --out runs/b`` repeats run a.

Flat keys and sections may be mixed. Where one setting comes from several places, the command line
wins over the file (an explicit flag or --set), the file over ``--preset`` (the file's own
``preset`` included), the preset over the defaults. An unknown key is a one-line error naming it
and the nearest known keys.
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from .config import ConfigError, TrainConfig, apply_overrides

EXTENSIONS = (".json", ".yaml", ".yml")
# options of calae train that are no config field: what they set
CLI_ONLY = {"method", "preset", "set", "sets", "out", "directory", "no_progress"}
# what a run's config.json holds beside its train and model sections: a record, not settings
RUN_RECORD = {"info", "precision", "threads", "world_size"}
SECTIONS = ("train", "model")


@dataclass
class FileConfig:
    path: str
    method: str | None = None
    preset: str | None = None
    out: str | None = None
    no_progress: bool = False
    train: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)


def load(path: str) -> dict:
    """The file's top-level object (JSON, or YAML with PyYAML); one-line errors for the rest."""
    p = Path(path)
    if not p.suffix.lower() in EXTENSIONS:
        raise ConfigError(f"--config {path}: give a .json, .yaml or .yml file")
    if not p.is_file():
        raise ConfigError(f"--config {path}: no such file")
    text = p.read_text(encoding="utf-8", errors="replace")
    if p.suffix.lower() == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--config {path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    else:
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"--config {path}: reading YAML needs PyYAML: pip install pyyaml "
                              "(or write the file as .json)") from None
        try:
            obj = yaml.safe_load(text)
        except yaml.YAMLError as e:
            where = getattr(e, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
            what = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"--config {path}: not valid YAML ({what}{at})") from None
    if obj is None:
        obj = {}
    if not isinstance(obj, dict):
        raise ConfigError(f"--config {path}: the file must hold a mapping of settings (key: value), "
                          f"not a {type(obj).__name__}")
    return obj


def _norm(key) -> str:
    return str(key).strip().lstrip("-").replace("-", "_")


def _unknown(path: str, key: str, known, where: str = "") -> ConfigError:
    near = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(near)}?" if near else ""
    return ConfigError(f"--config {path}: unknown key {key!r}{where}{hint} (keys: the options of calae train, "
                       "the keys --set takes, or a run's config.json)")


def read(path: str, method: str | None, methods: dict) -> FileConfig:
    """Parse ``path`` for ``calae train``. ``method``: the one given on the command line (None: the
    file must name it); ``methods``: the registry (name -> class with a ``Config``)."""
    obj = load(path)
    fc = FileConfig(path=path)
    flat = {_norm(k): v for k, v in obj.items() if _norm(k) not in SECTIONS}
    sections = {_norm(k): v for k, v in obj.items() if _norm(k) in SECTIONS}
    for name, sec in sections.items():
        if not isinstance(sec, dict):
            raise ConfigError(f"--config {path}: {name} must be a mapping of keys, not a {type(sec).__name__}")
    names = [m for m in (flat.get("method"), sections.get("train", {}).get("method")) if m is not None]
    for m in names:
        if not isinstance(m, str) or m not in methods:
            raise ConfigError(f"--config {path}: unknown method {m!r}; choose one of {', '.join(sorted(methods))}")
    if len(set(names)) > 1:
        raise ConfigError(f"--config {path}: method is given twice ({names[0]} and {names[1]}); give it once")
    fc.method = names[0] if names else None
    if method is not None and fc.method is not None and method != fc.method:
        raise ConfigError(f"--config {path} is a {fc.method} config, not {method}: leave the method out of the command "
                          f"or run calae train {fc.method}")
    method = method or fc.method
    if method is None:
        raise ConfigError(f"--config {path} names no method: add method: NAME to it, or give it as calae train "
                          f"NAME (one of {', '.join(sorted(methods))})")
    fc.method = method
    model_cls = methods[method].Config
    model_keys = {f.name for f in fields(model_cls)}
    train_keys = {f.name for f in fields(TrainConfig)}
    if "train" in sections or "model" in sections:  # a run's config.json (or that shape): its record is no setting
        for k in RUN_RECORD:
            flat.pop(k, None)
    for name, known, target in (("train", train_keys, fc.train), ("model", model_keys, fc.model)):
        for k, v in sections.get(name, {}).items():
            k = _norm(k)
            if k not in known:
                raise _unknown(path, k, known, f" in its {name} section")
            if not (name == "train" and k == "method"):
                target[k] = v
    sets: list[str] = []
    for k, v in flat.items():
        if k in model_keys:
            fc.model[k] = v
        elif k in train_keys:
            if k != "method":
                fc.train[k] = v
        elif k in ("set", "sets"):
            items = [v] if isinstance(v, str) else v
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise ConfigError(f"--config {path}: set must be a list of KEY=VALUE strings; got {v!r}")
            sets += items
        elif k in ("preset", "out", "directory"):
            if not isinstance(v, str) or not v:
                raise ConfigError(f"--config {path}: {k} must be a string; got {v!r}")
            if k == "directory":
                fc.train["data"] = f"mnist:{v}"
            else:
                setattr(fc, k, v)
        elif k == "no_progress":
            fc.no_progress = bool(v)
        else:
            raise _unknown(path, k, model_keys | train_keys | CLI_ONLY)
    if sets:  # the file's own --set lines, applied to the file's settings (the command line still wins)
        try:
            apply_overrides(fc.train, fc.model, model_cls, sets)
        except ConfigError as e:
            raise ConfigError(f"--config {path}: {e}") from None
    return fc


__all__ = ["FileConfig", "read", "load", "EXTENSIONS"]
