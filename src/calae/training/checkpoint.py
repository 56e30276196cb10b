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
def save_state(path: str | os.PathLike, method, optimizers: dict, counters: dict) -> None:
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
    meta = {"counters": json.dumps(counters), "optimizers": json.dumps(opt_meta), "format": "calae-state-1"}
    _atomic_save(tensors, Path(path), meta)


def load_state(path: str | os.PathLike, method, optimizers: dict) -> dict:
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
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return json.loads(meta["counters"])
