"""Without a measurement, --precision auto picks bf16 only where it is known faster (AMX CPUs, CUDA
with bf16), and the run's log says which precision was chosen and why (issue 12 §4)."""
from __future__ import annotations

import pytest
import torch

from calae.config import TrainConfig
from calae.training.precision import cpu_has_fast_bf16, resolve_precision

CPU = torch.device("cpu")


@pytest.fixture
def cpu_caps(monkeypatch):
    """Set the CPU capability probes torch exposes: cpu_caps(amx=..., avx512_bf16=...)."""
    def set_caps(amx: bool, avx512_bf16: bool):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    return set_caps


def test_avx512_bf16_without_amx_stays_fp32(cpu_caps):
    cpu_caps(amx=False, avx512_bf16=True)  # bf16 went both ways on such CPUs: the rule keeps fp32
    dtype, why = resolve_precision("auto", CPU)
    assert dtype is None and not cpu_has_fast_bf16()
    assert "AVX-512 BF16 but no AMX" in why and "not measured" in why and "\n" not in why


def test_amx_picks_bf16(cpu_caps):
    cpu_caps(amx=True, avx512_bf16=True)
    dtype, why = resolve_precision("auto", CPU)
    assert dtype is torch.bfloat16 and cpu_has_fast_bf16() and "AMX" in why


def test_plain_cpu_and_missing_probes_stay_fp32(cpu_caps, monkeypatch):
    cpu_caps(amx=False, avx512_bf16=False)
    assert resolve_precision("auto", CPU)[0] is None
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert resolve_precision("auto", CPU)[0] is None


def test_explicit_choices_win(cpu_caps):
    cpu_caps(amx=True, avx512_bf16=True)
    assert resolve_precision("fp32", CPU) == (None, "--precision fp32")
    cpu_caps(amx=False, avx512_bf16=False)
    dtype, why = resolve_precision("bf16", CPU)  # forced, with a warning that it is slower here (issue 16)
    assert dtype == torch.bfloat16 and why.startswith("--precision bf16") and "slower" in why


def test_cuda_follows_its_bf16_support(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", torch.device("cuda"))[0] is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    dtype, why = resolve_precision("auto", torch.device("cuda"))
    assert dtype is None and "no bf16" in why


@pytest.mark.parametrize("amx,want", [(False, "fp32"), (True, "bf16")])
def test_trainer_logs_the_choice_and_reason_once(cpu_caps, amx, want):
    from calae.training import Trainer

    cpu_caps(amx=amx, avx512_bf16=True)
    lines = []
    tr = Trainer(TrainConfig(method="vae", data="toy:rings", kimg=0.01, batch_size=8, device="cpu"),
                 {"z_dim": 2, "arch": "mlp", "hidden": 8, "depth": 1}, None, progress=False, log=lines.append)
    assert not [s for s in lines if s.startswith("precision:")]  # nothing before work starts
    tr.dry_run()
    prec = [s for s in lines if s.startswith("precision:")]
    assert len(prec) == 1 and prec[0].startswith(f"precision: {want} (auto: ")
    assert tr.resolved["precision"] == want


@pytest.mark.parametrize("method", ["alae", "calae"])
def test_style_models_train_in_bf16_through_a_fade_in(tmp_path, method):
    """Under bf16 autocast E's and G's fade-in lerps mixed a bf16 and an fp32 branch and raised
    'expected dtype BFloat16 for end but got float' at the first step with 0 < alpha < 1."""
    from calae.training import Trainer

    from conftest import tiny_model_cfg

    model = dict(tiny_model_cfg(method), arch="style", growth_kimg=0.032)
    cfg = TrainConfig(method=method, data="fractals", n_data=64, resolution=8, kimg=0.128, batch_size=8,
                      precision="bf16", device="cpu", sample_every_kimg=0, snapshot_every_kimg=0, log_every_kimg=0)
    tr = Trainer(cfg, model, tmp_path / "run", progress=False, pictures=False)
    alphas = {round(tr.method.growth.at(k / 1000)[1], 3) for k in range(0, 128, 8)}
    assert any(0 < a < 1 for a in alphas)  # the run passes through a fade-in
    res = tr.run()
    assert res["steps"] == tr.total_steps and res["skipped"] == 0
