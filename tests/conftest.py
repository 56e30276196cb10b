import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
torch.set_num_threads(min(2, os.cpu_count() or 1))
# CLI runs (in-process and the subprocesses cli_env starts) keep the CPU-feature precision rule and
# these thread counts: measuring alternatives is tested on its own (test_runtime, test_newcomer)
os.environ.setdefault("CALAE_CALIBRATE", "0")


def tiny_model_cfg(method: str, info_kind: str = "image") -> dict:
    """The method's declared tiny networks (``add_tiny`` next to its presets); a method without
    one is an error, so no contract test silently builds full-size nets."""
    from calae.config import tiny
    from calae.registry import load_all

    load_all()
    return tiny(method)["model"]


@pytest.fixture(scope="session")
def cli_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env
