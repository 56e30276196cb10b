"""Precision and threads chosen by measurement, cached per machine (issue 18): the fastest measured
setting wins, flags keep their value, the cache spares a second measurement, the throw-away probe
leaves the run untouched, and changing only --precision or --threads resumes a run."""
from __future__ import annotations

import json
import time

import pytest
import torch

from calae.config import TrainConfig
from calae.training import Trainer, runtime
from conftest import tiny_model_cfg

CPU = torch.device("cpu")
WORKLOAD = {"method": "fake", "model": {}, "info": {}, "batch_size": 8, "device": "cpu"}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(runtime.SWITCH_ENV, "1")
    monkeypatch.setattr(runtime, "TIMED_S", 0.02)
    monkeypatch.setattr(runtime, "cores", lambda: 2)
    monkeypatch.setattr(runtime, "load_level", lambda: ("idle", 0.1))
    threads = {"n": torch.get_num_threads()}
    yield tmp_path / "cache" / runtime.CACHE_FILE
    torch.set_num_threads(threads["n"])


def fake_step(cost: dict, calls: list):
    """A step whose duration depends on (precision, threads): cost["fp32x1"] seconds per full step
    (a tenth of it for the small screening step)."""
    def step(amp, full):
        name = runtime.setting_name(amp, torch.get_num_threads())
        calls.append((name, full))
        time.sleep(cost[name] * (1.0 if full else 0.1))
    return step


def test_fastest_measured_setting_wins_and_is_cached(cache):
    cost = {"fp32x1": 0.004, "fp32x2": 0.002, "bf16x1": 0.05, "bf16x2": 0.04}
    calls = []
    lines = []
    rt = runtime.choose("auto", 0, CPU, WORKLOAD, fake_step(cost, calls), 8, lines.append)
    assert (rt.precision, rt.threads) == ("fp32", 2) and torch.get_num_threads() == 2
    assert rt.img_per_s == pytest.approx(8 / 0.002, rel=0.5)
    # bf16 lost on its small steps alone (over 3x slower): never run at full size
    assert not [c for c in calls if c[0].startswith("bf16") and c[1]]
    assert rt.line().startswith("precision: fp32, 2 threads (auto: fastest of fp32 x2 ")
    assert "measured now" in rt.line() and "\n" not in rt.line()
    assert any("measuring precision and threads" in s for s in lines)
    entry = next(iter(json.loads(cache.read_text())["entries"].values()))
    # bf16 is tried at fp32's winning thread count only
    assert set(entry["timings"]) == {"fp32x1", "fp32x2", "bf16x2"} and entry["machine"]["cores"] == runtime.cores()

    calls.clear()
    rt2 = runtime.choose("auto", 0, CPU, WORKLOAD, fake_step(cost, calls), 8, lines.append)
    assert not calls and (rt2.precision, rt2.threads) == ("fp32", 2) and "cached measurement" in rt2.why


def test_one_thread_wins_when_it_is_faster(cache):
    cost = {"fp32x1": 0.002, "fp32x2": 0.005, "bf16x1": 0.003, "bf16x2": 0.006}
    rt = runtime.choose("auto", 0, CPU, WORKLOAD, fake_step(cost, []), 8)
    assert (rt.precision, rt.threads) == ("fp32", 1)
    cost = {"fp32x1": 0.006, "fp32x2": 0.005, "bf16x1": 0.003, "bf16x2": 0.004}
    rt = runtime.choose("auto", 0, CPU, dict(WORKLOAD, method="other"), fake_step(cost, []), 8)
    assert (rt.precision, rt.threads) == ("bf16", 2)  # measured faster: bf16 whatever the CPU flags say


def test_flags_keep_their_value_and_only_the_rest_is_measured(cache):
    cost = {"fp32x1": 0.002, "fp32x2": 0.004, "bf16x1": 0.01, "bf16x2": 0.001}
    calls = []
    rt = runtime.choose("fp32", 0, CPU, WORKLOAD, fake_step(cost, calls), 8)
    assert (rt.precision, rt.threads) == ("fp32", 1) and {c[0] for c in calls} == {"fp32x1", "fp32x2"}
    assert "--precision fp32 as given" in rt.why
    calls.clear()
    rt = runtime.choose("auto", 2, CPU, dict(WORKLOAD, method="b"), fake_step(cost, calls), 8)
    assert (rt.precision, rt.threads) == ("bf16", 2) and {c[0] for c in calls} == {"fp32x2", "bf16x2"}
    calls.clear()
    rt = runtime.choose("bf16", 1, CPU, WORKLOAD, fake_step(cost, calls), 8)  # nothing left to choose
    assert (rt.precision, rt.threads) == ("bf16", 1) and {c[0] for c in calls} == {"bf16x1"}
    assert rt.img_per_s > 0 and "--threads 1" in rt.why


def test_switched_off_measures_only_the_rule_choice(cache, monkeypatch):
    monkeypatch.setenv(runtime.SWITCH_ENV, "0")
    calls = []
    cost = {f"{p}x{t}": 0.002 for p in ("fp32", "bf16") for t in range(1, 65)}
    rt = runtime.choose("auto", 0, CPU, WORKLOAD, fake_step(cost, calls), 8)
    assert len({c[0] for c in calls}) == 1 and rt.img_per_s > 0 and not cache.exists()


def test_a_busy_machine_is_measured_apart(cache, monkeypatch):
    cost = {"fp32x1": 0.004, "fp32x2": 0.002, "bf16x1": 0.05, "bf16x2": 0.04}
    runtime.choose("auto", 0, CPU, WORKLOAD, fake_step(cost, []), 8)
    monkeypatch.setattr(runtime, "load_level", lambda: ("busy", 3.0))
    cost = {"fp32x1": 0.002, "fp32x2": 0.006, "bf16x1": 0.05, "bf16x2": 0.04}
    rt = runtime.choose("auto", 0, CPU, WORKLOAD, fake_step(cost, []), 8)
    assert rt.threads == 1 and "busy" in rt.why
    assert len(json.loads(cache.read_text())["entries"]) == 2


def test_an_unreadable_cache_is_measured_again(cache):
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    rt = runtime.choose("auto", 0, CPU, WORKLOAD, fake_step({"fp32x1": 0.001, "fp32x2": 0.002, "bf16x1": 0.01,
                                                            "bf16x2": 0.01}, []), 8)
    assert rt.threads == 1 and json.loads(cache.read_text())["version"] == runtime.CACHE_VERSION


def tiny_cfg(**kw):
    return TrainConfig(**{"method": "vae", "data": "digits", "resolution": 16, "kimg": 0.128, "batch_size": 16,
                          "log_every_kimg": 0.064, "sample_every_kimg": 100, "snapshot_every_kimg": 0.064, **kw})


def test_the_probe_leaves_the_run_untouched(tmp_path, cache):
    """A calibrated run trains exactly as an uncalibrated one (same weights): the probe steps run on
    a copy and restore the random streams."""
    a = Trainer(tiny_cfg(precision="fp32", threads=1), tiny_model_cfg("vae"), tmp_path / "a", progress=False)
    a.run()
    lines = []
    b = Trainer(tiny_cfg(precision="fp32", threads=1), tiny_model_cfg("vae"), tmp_path / "b", progress=False,
                calibrate=True, log=lines.append)
    b.run()
    sa, sb = a.method.state_dict(), b.method.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [s for s in lines if s.startswith("estimated duration: ")]
    first = [i for i, s in enumerate(lines) if s.startswith(("precision:", "data:", "estimated duration:"))]
    assert first == [0, 1, 2]  # the choice, the data found, then the estimate, before anything else
    assert json.loads((tmp_path / "b" / "config.json").read_text())["threads"] == 1


def test_changing_only_precision_or_threads_resumes(tmp_path, cache):
    out = tmp_path / "r"
    Trainer(tiny_cfg(precision="fp32", threads=1), tiny_model_cfg("vae"), out, progress=False).run(stop_at_step=4)
    lines = []
    tr = Trainer(tiny_cfg(precision="bf16", threads=2), tiny_model_cfg("vae"), out, progress=False, log=lines.append)
    res = tr.run()
    assert any(s.startswith(f"resuming {out} at 0.06 kimg (step 4)") for s in lines), lines
    assert res["steps"] == tr.total_steps
    # what is trained still counts: another config is refused
    from calae.config import ConfigError

    with pytest.raises(ConfigError, match="different config"):
        Trainer(tiny_cfg(precision="fp32", batch_size=8), tiny_model_cfg("vae"), out, progress=False).run()


def test_a_network_too_slow_to_compare_keeps_the_rule_and_all_cores(cache, monkeypatch):
    monkeypatch.setattr(runtime, "SLOW_STEP_S", 0.005)
    calls = []
    cost = {"fp32x1": 0.2, "fp32x2": 0.1, "bf16x1": 0.2, "bf16x2": 0.1}  # small steps of 0.01-0.02 s
    rt = runtime.choose("auto", 0, CPU, WORKLOAD, fake_step(cost, calls), 8)
    assert calls == [("fp32x2", False)] and (rt.precision, rt.threads) == ("fp32", 2)
    assert "too slow to compare settings" in rt.why and rt.img_per_s > 0 and not cache.exists()


def test_the_estimate_times_each_stage_of_a_warm_up_schedule(tmp_path, cache):
    """Soft-IntroVAE's VAE warm-up and its introspective steps run at different speeds: the stages
    are cut where the active phases change, each is timed, and the estimate adds them up."""
    lines = []
    model = {**tiny_model_cfg("soft_intro_vae"), "warmup_kimg": 0.064}
    tr = Trainer(tiny_cfg(method="soft_intro_vae", precision="fp32", threads=1), model, tmp_path / "s",
                 progress=False, calibrate=True, log=lines.append)
    assert [(k, first, n) for k, first, n in tr.stages(0)] == [(("warmup",), 0, 4), (("encoder", "decoder"), 4, 4)]
    assert tr.stages(6) == [(("encoder", "decoder"), 6, 2)]
    tr.dry_run()
    est = [s for s in lines if s.startswith("estimated duration: ")]
    assert len(est) == 1 and "kimg, 0.064 at " in est[0] and " then 0.064 at " in est[0], est
    assert set(tr._stage_rates) == {("warmup",)}  # the calibration timed mid-run (step 5): the other stage
    plan = tr._stage_plan()
    assert [img for img, _ in plan] == [64, 64] and plan[0][1] == tr._stage_rates[("warmup",)]
    assert plan[1][1] == tr.runtime.img_per_s
    assert tr.estimate_seconds() >= 64 / plan[0][1] + 64 / plan[1][1]
