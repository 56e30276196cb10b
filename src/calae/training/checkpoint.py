"""Checkpoints in safetensors + JSON, written atomically, never unpickled.

Two kinds (DESIGN.md):
- the inference snapshot (``snapshot.safetensors``): the method's weights (EMA copies included) and,
  in the file's metadata, the method name, its config and the data description. Loading it needs
  the method's network code only: no loop, no optimizers, no pickle.
- the training state (``state.safetensors``): weights, optimizer states, RNG states and counters
  for an exact resume.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config import from_dict
from ..data.base import DataInfo
from ..registry import METHODS, load_all


class CheckpointError(ValueError):
    """A missing, truncated or foreign checkpoint; the CLI prints it on one line."""


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _atomic_save(tensors: dict, path: Path, metadata: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    with open(tmp, "rb") as f:  # make the bytes durable before the rename makes them visible
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint; give a run folder or a .safetensors snapshot")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return load_file(str(path)), meta
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({e}); it may be truncated "
                              "or not a calae file; use an intact copy or retrain") from None


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


def _jsonable(dc) -> dict:
    import dataclasses

    return json.loads(json.dumps(dataclasses.asdict(dc)))


def build_method(name: str, model_cfg: dict, info: dict | DataInfo):
    load_all()
    if name not in METHODS:
        raise CheckpointError(f"checkpoint names unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    cfg = from_dict(cls.Config, model_cfg, f"{name} config")
    if isinstance(info, dict):
        info = DataInfo(**info)
    return cls(cfg, info)


def load_snapshot(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Rebuild a trained method from a snapshot file or run folder, in eval mode."""
    path = Path(path)
    if path.is_dir():
        path = path / "snapshot.safetensors"
    tensors, meta = _read(path)
    if "calae" not in meta:
        raise CheckpointError(f"{path}: not a calae snapshot (no calae metadata)")
    head = json.loads(meta["calae"])
    method = build_method(head["method"], head["model"], head["info"])
    missing, unexpected = method.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the {head['method']} networks "
                              f"(missing {len(missing)}, unexpected {len(unexpected)}); was it written by "
                              "another calae version?")
    method.snapshot_meta = head
    method = method.to(device).eval()
    if method.conv:  # the layout training used: same kernels, same numbers, faster on CPU
        method.to(memory_format=torch.channels_last)
    return method


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


def load_state(path: str | os.PathLike, method, optimizers: dict, rank: int | None = None) -> dict:
    """Restore a training state; each data-parallel rank (``rank``, default this process's) takes
    its own RNG state back when the file has one per rank."""
    from .distributed import set_rng_state, world

    tensors, meta = _read(Path(path))
    if meta.get("format") != "calae-state-1":
        raise CheckpointError(f"{path}: not a calae training state")
    model_sd = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    method.load_state_dict(model_sd)
    opt_meta = json.loads(meta["optimizers"])
    for name, opt in optimizers.items():
        state: dict = {}
        prefix = f"opt.{name}."
        for k, v in tensors.items():
            if k.startswith(prefix):
                pid, key = k[len(prefix):].split(".", 1)
                state.setdefault(int(pid), {})[key] = v
        opt.load_state_dict({"state": state, "param_groups": opt_meta[name]})
    rank = world()[0] if rank is None else rank
    if f"rng.rank{rank}" in tensors:
        set_rng_state(tensors[f"rng.rank{rank}"])
    else:  # a single-process state (or one written before states were kept per rank)
        torch.set_rng_state(tensors["rng.cpu"])
        if "rng.cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng.cuda"])
    return json.loads(meta["counters"])


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
    head = json.loads(meta["calae"])
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
