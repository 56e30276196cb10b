import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
torch.set_num_threads(min(2, os.cpu_count() or 1))


def tiny_model_cfg(method: str, info_kind: str = "image") -> dict:
    """Small networks for contract tests, per method."""
    base = {
        "vae": {"z_dim": 8, "base_channels": 8, "max_channels": 16, "hidden": 32, "depth": 2},
        # one entry per method: small networks so contract tests stay fast
        "aae": {"z_dim": 4, "arch": "mlp", "hidden": 32, "depth": 1, "d_hidden": 32, "d_depth": 1},
        "soft_intro_vae": {"z_dim": 8, "base_channels": 8, "max_channels": 16, "hidden": 32, "depth": 2,
                           "beta_neg": 64.0, "gamma_r": 1e-3, "warmup_kimg": 0.064, "beta_neg_schedule": "adaptive",
                           "beta_neg_range": [4.0, 256.0], "augment": "translation,color,cutout"},
        "as_intro_vae": {"z_dim": 8, "base_channels": 8, "max_channels": 16, "hidden": 32, "depth": 2,
                         "beta_neg": 64.0, "ema_kimg": 0.05, "beta_neg_schedule": "piecewise",
                         "beta_neg_points": [[0, 64.0], [0.128, 16.0]]},
        # style arch with progressive growing: 16 px digits = levels 4, 8, 16 px; growth_kimg 0.064 puts
        # the engine's resume point (step 5 of batch 16 = 0.08 kimg) in the middle of the 8 px fade-in
        "alae": {"arch": "style", "z_dim": 8, "base_channels": 4, "max_channels": 8, "mapping_layers": 2,
                 "d_layers": 2, "growth_kimg": 0.064, "ema_kimg": 0.05},
    }
    return dict(base.get(method, {}))


@pytest.fixture(scope="session")
def cli_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env
