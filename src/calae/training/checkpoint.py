"""Checkpoints in safetensors + JSON, written atomically, never unpickled.

Two kinds (DESIGN.md):
- the inference snapshot (``snapshot.safetensors``): the method's weights (EMA copies included) and,
  in the file's metadata, the method name, its config and the data description. Loading it needs
  the method's network code only: no loop, no optimizers, no pickle.
- the training state (``state.safetensors``): weights, optimizer states, RNG states and counters
  for an exact resume.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config import NetConfig, from_dict
from ..data.base import DataInfo
from ..registry import METHODS, load_all


class CheckpointError(ValueError):
    """A missing, truncated, damaged or foreign checkpoint; the CLI prints it on one line."""


DIGEST_KEY = "sha256"  # metadata key of the content hash over every tensor (name, dtype, shape, bytes)
_PAUSE_ENV = "CALAE_FAULT_PAUSE_WRITE_S"  # fault-injection hook: pause inside a checkpoint write


def digest(tensors: dict) -> str:
    """SHA-256 over the tensors in name order: each one's name, dtype, shape and raw bytes. A
    flipped byte anywhere in the data (or a renamed / reshaped tensor) changes it."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().contiguous().cpu()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)  # a full disk or a kill leaves the old file, not a temporary beside it
        raise


def _atomic_save(tensors: dict, path: Path, metadata: dict) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    metadata = {**metadata, DIGEST_KEY: digest(tensors)}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        with open(tmp, "rb") as f:  # make the bytes durable before the rename makes them visible
            os.fsync(f.fileno())
        pause = float(os.environ.get(_PAUSE_ENV, "0") or 0)
        if pause > 0:  # tests and benchmarks/soak.py kill the process here, inside the write
            time.sleep(pause)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _read(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    if not os.path.lexists(path):
        raise CheckpointError(f"{path}: no such checkpoint; give a run folder or a .safetensors snapshot")
    if not path.is_file():  # a named pipe would block forever, a folder is not a file
        raise CheckpointError(f"{path}: not a regular file; give a run folder or a .safetensors snapshot")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError, OverflowError, MemoryError) as e:
        why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({why}); it may be truncated "
                              "or not a calae file; use an intact copy or retrain") from None
    want = meta.get(DIGEST_KEY)
    if want is not None and digest(tensors) != want:
        raise CheckpointError(f"{path}: damaged (its content hash does not match: the file was changed after it "
                              "was written); use an intact copy or retrain")
    return tensors, meta


def _check_finite(path: Path, tensors: dict, prefix: str = "") -> None:
    for k, v in tensors.items():
        if k.startswith(prefix) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{path}: tensor {k} holds NaN or infinite weights (the run diverged before "
                                  "this checkpoint); use an earlier copy or retrain with a lower learning rate")


def _json_meta(path: Path, meta: dict, key: str) -> dict:
    try:
        head = json.loads(meta[key])
    except KeyError:
        raise CheckpointError(f"{path}: not a calae checkpoint (no {key} metadata)") from None
    except (TypeError, ValueError):
        raise CheckpointError(f"{path}: its {key} metadata is not valid JSON; the file is damaged") from None
    if not isinstance(head, dict):
        raise CheckpointError(f"{path}: its {key} metadata is a JSON {type(head).__name__}, not an object; "
                              "the file is damaged")
    return head


_INFO_LIMITS = {"resolution": (0, 1024), "channels": (0, 3), "dim": (0, 65536), "num_classes": (0, 100_000),
                "num_params": (0, 4096)}


def _check_info(where: str, info) -> DataInfo:
    """A data description from a file: known keys, sane types and sizes (a hostile file must not make
    us build a 1 TB network)."""
    if isinstance(info, DataInfo):
        return info
    if not isinstance(info, dict):
        raise CheckpointError(f"{where}: its data description is not an object")
    known = {f.name for f in dataclasses.fields(DataInfo)}
    unknown = sorted(set(info) - known)
    if unknown:
        raise CheckpointError(f"{where}: unknown data description key(s) {', '.join(unknown)}")
    if info.get("kind") not in ("image", "points"):
        raise CheckpointError(f"{where}: data kind must be image or points; got {info.get('kind')!r}")
    for k, (lo, hi) in _INFO_LIMITS.items():
        v = info.get(k, 0)
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise CheckpointError(f"{where}: data description {k} must be an integer in [{lo}, {hi}]; got {v!r}")
    if info["kind"] == "image" and (info.get("resolution", 0) < 4 or info.get("channels") not in (1, 3)):
        raise CheckpointError(f"{where}: an image model needs a resolution of 4..1024 and 1 or 3 channels; got "
                              f"{info.get('resolution')!r} and {info.get('channels')!r}")
    if info["kind"] == "points" and info.get("dim", 0) < 1:
        raise CheckpointError(f"{where}: a points model needs dim >= 1; got {info.get('dim')!r}")
    if not isinstance(info.get("name", ""), str):
        raise CheckpointError(f"{where}: data description name must be a string")
    return DataInfo(**info)


# ---- inference snapshot ----------------------------------------------------------------------
def save_snapshot(method, path: str | os.PathLike, train_cfg: dict, extra: dict | None = None) -> None:
    meta = {
        "calae": json.dumps({
            "format": "calae-snapshot-1",
            "method": method.name,
            "model": _jsonable(method.cfg),
            "info": _jsonable(method.info),
            "train": train_cfg,
            **(extra or {}),
        })
    }
    _atomic_save(method.state_dict(), Path(path), meta)
    keep = train_cfg.get("keep") if isinstance(train_cfg, dict) else None
    kimg = (extra or {}).get("kimg")
    if keep is not None and Path(path).name == SNAPSHOT_NAME and isinstance(kimg, (int, float)):
        keep_history(Path(path), kimg, keep)


SNAPSHOT_NAME = "snapshot.safetensors"
HISTORY_DIR = "snapshots"  # numbered snapshots of a run kept with --keep


def keep_history(snapshot: Path, kimg: float, keep: int) -> Path:
    """Keep the snapshot just written as ``snapshots/snapshot-<images seen>.safetensors`` (a hard
    link where the file system allows it, so it costs no second write: the next checkpoint replaces
    snapshot.safetensors by a new file and the link keeps the old one), then delete all but the
    ``keep`` newest numbered ones (0: keep every one). snapshot.safetensors (the latest) and
    state.safetensors (what a resume needs) are never deleted."""
    hist = snapshot.parent / HISTORY_DIR
    hist.mkdir(exist_ok=True)
    dest = hist / f"snapshot-{int(round(kimg * 1000)):09d}.safetensors"
    tmp = hist / f".{dest.name}.tmp{os.getpid()}"
    try:
        try:
            os.link(snapshot, tmp)
        except OSError:  # no hard links here (some network or FAT file systems): a copy
            shutil.copyfile(snapshot, tmp)
        os.replace(tmp, dest)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    for p in hist.iterdir():  # temporaries a killed writer left
        if p.name.startswith(".snapshot-") and ".tmp" in p.name and p != tmp:
            _unlink_quietly(p)
    if keep > 0:
        for old in history(snapshot.parent)[:-keep]:
            _unlink_quietly(old)
    return dest


def history(run_dir: str | os.PathLike) -> list[Path]:
    """The run's numbered snapshots (``--keep``), oldest first."""
    hist = Path(run_dir) / HISTORY_DIR
    if not hist.is_dir():
        return []
    return sorted(p for p in hist.glob("snapshot-*.safetensors") if p.is_file())


def _jsonable(dc) -> dict:
    import dataclasses

    return json.loads(json.dumps(dataclasses.asdict(dc)))


def build_method(name: str, model_cfg: dict, info: dict | DataInfo, where: str = "checkpoint"):
    load_all()
    if not isinstance(name, str) or name not in METHODS:
        raise CheckpointError(f"{where} names unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    if not isinstance(model_cfg, dict):
        raise CheckpointError(f"{where}: its model config is not an object")
    info = _check_info(where, info)
    cls = METHODS[name]
    if issubclass(cls.Config, NetConfig):
        model_cfg = cls.Config.upgrade_saved(model_cfg)
    try:
        cfg = from_dict(cls.Config, model_cfg, f"{name} config")
    except ValueError as e:  # ConfigError: an unknown key or a bad value in the file
        raise CheckpointError(f"{where}: {e}") from None
    return cls(cfg, info)


def load_snapshot(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Rebuild a trained method from a snapshot file or run folder, in eval mode."""
    path = Path(path)
    if path.is_dir():
        path = path / "snapshot.safetensors"
    tensors, meta = _read(path)
    head = _json_meta(path, meta, "calae")
    if head.get("format") != "calae-snapshot-1":
        raise CheckpointError(f"{path}: not a calae snapshot (format {head.get('format')!r}, expected "
                              "'calae-snapshot-1')")
    lacking = [k for k in ("method", "model", "info") if k not in head]
    if lacking:
        raise CheckpointError(f"{path}: its metadata lacks {', '.join(lacking)}; the file is damaged")
    _check_finite(path, tensors)
    method = build_method(head["method"], head["model"], head["info"], str(path))
    _load_weights(path, method, tensors, head["method"])
    method.snapshot_meta = head
    method = method.to(device).eval()
    if method.conv:  # the layout training used: same kernels, same numbers, faster on CPU
        method.to(memory_format=torch.channels_last)
    return method


def _load_weights(path: Path, method, tensors: dict, name: str) -> None:
    own = method.state_dict()
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the {name} networks "
                              f"(missing {len(missing)}, unexpected {len(unexpected)}); was it written by "
                              "another calae version?")
    for k, v in own.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{path}: tensor {k} has shape {list(tensors[k].shape)} but the {name} network "
                                  f"built from its config needs {list(v.shape)}; the file is damaged or foreign")
    method.load_state_dict(tensors)


# ---- training state ------------------------------------------------------------------------
def save_state(path: str | os.PathLike, method, optimizers: dict, counters: dict,
               rng: list[torch.Tensor] | None = None) -> None:
    """``rng``: every data-parallel rank's RNG state (``distributed.gather_rng_states``), rank r's
    stored as ``rng.rank{r}``, so each rank resumes its own random stream; None (one process): this
    process's CPU and CUDA states, as ``rng.cpu`` / ``rng.cuda``."""
    tensors = {f"model.{k}": v for k, v in method.state_dict().items()}
    opt_meta = {}
    for name, opt in optimizers.items():
        sd = opt.state_dict()
        for pid, st in sd["state"].items():
            for k, v in st.items():
                tensors[f"opt.{name}.{pid}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
        opt_meta[name] = sd["param_groups"]
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    for r, st in enumerate(rng or ()):
        tensors[f"rng.rank{r}"] = st
    meta = {"counters": json.dumps(counters), "optimizers": json.dumps(opt_meta), "format": "calae-state-1"}
    _atomic_save(tensors, Path(path), meta)


def _match_param_layouts(opt: torch.optim.Optimizer) -> None:
    """Give each loaded moment its parameter's memory layout. The file stores them contiguous,
    the parameters of conv nets are channels_last, and fused Adam walks parameter, gradient and
    moments as one flat array: mixed layouts would pair the wrong elements (no error, a scrambled
    step)."""
    for g in opt.param_groups:
        for p in g["params"]:
            st = opt.state.get(p)
            for k, v in (st or {}).items():
                if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                    st[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def load_state(path: str | os.PathLike, method, optimizers: dict, rank: int | None = None) -> dict:
    """Restore a training state; each data-parallel rank (``rank``, default this process's) takes
    its own RNG state back when the file has one per rank."""
    from .distributed import set_rng_state, world

    path = Path(path)
    tensors, meta = _read(path)
    if meta.get("format") != "calae-state-1":
        raise CheckpointError(f"{path}: not a calae training state")
    _check_finite(path, tensors, "model.")
    model_sd = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    _load_weights(path, method, model_sd, method.name)
    counters = _json_meta(path, meta, "counters")
    opt_meta = _json_meta(path, meta, "optimizers")
    try:
        for name, opt in optimizers.items():
            state: dict = {}
            prefix = f"opt.{name}."
            for k, v in tensors.items():
                if k.startswith(prefix):
                    pid, key = k[len(prefix):].split(".", 1)
                    state.setdefault(int(pid), {})[key] = v
            opt.load_state_dict({"state": state, "param_groups": opt_meta[name]})
            _match_param_layouts(opt)
        rank = world()[0] if rank is None else rank
        if f"rng.rank{rank}" in tensors:
            set_rng_state(tensors[f"rng.rank{rank}"])
        else:  # a single-process state (or one written before states were kept per rank)
            torch.set_rng_state(tensors["rng.cpu"])
            if "rng.cuda" in tensors and torch.cuda.is_available():
                torch.cuda.set_rng_state(tensors["rng.cuda"])
        step, kimg = counters["step"], counters["kimg"]
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: the training state is damaged or foreign ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:120] if str(e) else ''}); restore an intact copy, or pass "
                              "--force to start over") from None
    if not (isinstance(step, int) and step >= 0 and isinstance(kimg, (int, float)) and math.isfinite(kimg)):
        raise CheckpointError(f"{path}: its counters are damaged (step {step!r}, kimg {kimg!r})")
    counters.setdefault("skipped", 0)
    counters.setdefault("frames", [])
    counters.setdefault("time_s", 0.0)
    win = counters.setdefault("log_window", {"sums": {}, "counts": {}})  # states written before it: empty
    if not _valid_log_window(win):
        raise CheckpointError(f"{path}: its counters are damaged (log_window {str(win)[:80]}); restore an intact "
                              "copy, or pass --force to start over")
    return counters


def _valid_log_window(win) -> bool:
    """The logging window's partial sums: {"sums": {name: float}, "counts": {name: int > 0}}, same names."""
    if not (isinstance(win, dict) and set(win) == {"sums", "counts"}):
        return False
    sums, counts = win["sums"], win["counts"]
    return (isinstance(sums, dict) and isinstance(counts, dict) and set(sums) == set(counts)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in sums.values())
            and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in counts.values()))


# ---- starting a run from another run's networks -----------------------------------------------
def copy_networks(source: str | os.PathLike, method, names: tuple[str, ...] = ()) -> str:
    """Copy the named networks (default: every network both have) from a snapshot or run folder
    into ``method``; their EMA copies start from the source's EMA copy when it has one, else from
    the copied weights. Shapes are checked first, so a mismatch changes nothing. Returns a line
    saying what was copied."""
    from ..config import ConfigError

    path = Path(source)
    if path.is_dir():
        path = path / "snapshot.safetensors"
    tensors, meta = _read(path)
    if "calae" not in meta:
        raise CheckpointError(f"--init-from {source}: not a calae snapshot (no calae metadata)")
    head = _json_meta(path, meta, "calae")
    _check_finite(path, tensors)
    have = sorted({k.split(".")[1] for k in tensors if k.startswith("nets.")})
    names = tuple(names) or tuple(n for n in method.nets if n in have)
    if not names:
        raise ConfigError(f"--init-from {source}: it has networks {', '.join(have)} and this {method.name} run "
                          f"has {', '.join(method.nets)}: none in common; name them with --init-nets")
    for n in names:
        if n not in method.nets or n not in have:
            where = "this run" if n not in method.nets else str(source)
            raise ConfigError(f"--init-nets {n}: {where} has no network {n} (source: {', '.join(have)}; "
                              f"this run: {', '.join(method.nets)})")
    plan = []
    for n in names:
        dest = method.nets[n].state_dict()
        src = {k[len(f"nets.{n}."):]: v for k, v in tensors.items() if k.startswith(f"nets.{n}.")}
        for k, v in dest.items():
            if k not in src:
                raise ConfigError(f"--init-from {source}: network {n} has no tensor {k} there: the two runs' "
                                  f"{n} architectures differ; use the same network options or leave {n} out of "
                                  "--init-nets")
            if tuple(src[k].shape) != tuple(v.shape):
                raise ConfigError(f"--init-from {source}: network {n} tensor {k} has shape {list(src[k].shape)} "
                                  f"there but {list(v.shape)} here; use the same network options (z_dim, "
                                  f"channels, ...) or leave {n} out of --init-nets")
        ema = {k[len(f"ema.{n}."):]: v for k, v in tensors.items() if k.startswith(f"ema.{n}.")}
        plan.append((n, src, ema))
    with torch.no_grad():
        for n, src, ema in plan:
            method.nets[n].load_state_dict({k: src[k] for k in method.nets[n].state_dict()})
            if n in method.ema:
                ok = ema and all(k in ema and ema[k].shape == v.shape for k, v in method.ema[n].state_dict().items())
                method.ema[n].load_state_dict({k: (ema if ok else src)[k] for k in method.ema[n].state_dict()})
    kimg = head.get("kimg")
    at = f" at {kimg:.1f} kimg" if isinstance(kimg, (int, float)) else ""
    return f"initialised {', '.join(names)} from {source} ({head.get('method')}{at})"
