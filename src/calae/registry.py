"""Registries: plain dicts from short names to builders.

The CLI builds its choices from these, saved configs hold these names (never import paths), and
contract tests are parametrised over them.  Modules register themselves on import; `load_all()`
imports every module that registers something.
"""
from __future__ import annotations

import importlib
from typing import Callable, Dict

METHODS: Dict[str, object] = {}
DATASETS: Dict[str, Callable] = {}
PRIORS: Dict[str, Callable] = {}
METRICS: Dict[str, Callable] = {}
PRESETS: Dict[str, dict] = {}
TINY: Dict[str, dict] = {}  # method -> the smallest config the contract tests build (config.add_tiny)

_MODULES = (
    "calae.data",
    "calae.priors",
    "calae.methods",
    "calae.metrics",
)


def register(table: Dict[str, object], name: str):
    def deco(obj):
        if name in table:
            raise KeyError(f"{name!r} registered twice")
        table[name] = obj
        return obj

    return deco


def load_all() -> None:
    for m in _MODULES:
        importlib.import_module(m)
