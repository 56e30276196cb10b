"""Threads and precision chosen by measurement on the machine at hand, and duration estimates.

Rules of thumb lost on real machines: on a 2-core AMD EPYC with AVX-512 BF16 and no AMX, bf16
autocast ran a small VAE 2.4x slower than fp32, and with other jobs running one torch thread beat
two (issue 18). So ``--precision auto`` and ``--threads`` left unset are decided by timing a few
training steps of the run's own networks on its own batch size in each candidate setting (fp32 and
bf16, one thread and every core), on a throw-away copy of the model (the run's weights and random
streams are untouched). The timings are cached per machine (CPU model, torch version, core count),
per workload (method, model config, data shape, batch size) and per load level (idle or busy) in
``$CALAE_CACHE_DIR`` (default ``~/.cache/calae``), so only the first run of a kind pays for them.

``CALAE_CALIBRATE=0`` turns the measurement of alternatives off (the test suite does): auto then
falls back to the CPU-feature rule of ``precision.resolve_precision`` and torch's thread count, and
only the chosen setting is timed, for the duration estimate.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .precision import resolve_precision

CACHE_ENV = "CALAE_CACHE_DIR"
SWITCH_ENV = "CALAE_CALIBRATE"
CACHE_FILE = "calibration.json"
CACHE_VERSION = 1
MAX_AGE_S = 30 * 24 * 3600  # timings older than this are measured again
TIMED_S = 0.4  # timed steps per setting run for at least this long (after one warm-up step) ...
MAX_TIMED_STEPS = 6  # ... and at most this many


def enabled() -> bool:
    return os.environ.get(SWITCH_ENV, "1").strip().lower() not in ("0", "off", "false", "no")


def cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine() -> dict:
    return {"cpu": cpu_model(), "cores": cores(), "torch": torch.__version__}


def load_level() -> tuple[str, float]:
    """("idle" | "busy", 1-minute load average): the thread count that wins depends on it."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return "idle", 0.0
    return ("busy" if load >= 0.5 * cores() else "idle"), load


def cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "calae"


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("entries"), dict):
        return {}
    return data["entries"]


def _write_cache(path: Path, entries: dict) -> bool:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps({"version": CACHE_VERSION, "entries": entries}, indent=1))
        os.replace(tmp, path)
        return True
    except OSError:
        return False


def setting_name(amp: torch.dtype | None, threads: int) -> str:
    return f"{'bf16' if amp is not None else 'fp32'}x{threads}"


@dataclass
class Runtime:
    """What a run uses (autocast dtype or None, torch threads), its measured speed and why."""

    amp: torch.dtype | None
    threads: int
    img_per_s: float | None  # training steps only, at this setting
    why: str
    timings: dict[str, float] = field(default_factory=dict)  # setting name -> img/s

    @property
    def precision(self) -> str:
        return "bf16" if self.amp is not None else "fp32"

    def line(self) -> str:
        t = "thread" if self.threads == 1 else "threads"
        return f"precision: {self.precision}, {self.threads} {t} ({self.why})"


SCREEN_IMAGES = 4  # a setting is first tried on this many images (the probe's small batch) ...
SCREEN_LOSES = 3.0  # ... and dropped, untimed at full size, when that is this many times slower than the best
SLOW_STEP_S = 4.0  # a first small step slower than this ends the calibration: the rule's choice, that speed


def _measure(step: Callable[[torch.dtype | None, bool], None], amp, threads: int, images_per_step: int,
             sync: Callable[[], None], best_screen: float | None = None,
             warm: bool = False) -> tuple[float, float, str]:
    """(img/s of ``step(amp, full=True)`` at ``threads`` threads, img/s of the small first step,
    "timed" | "screened" (slower than the best by far) | "slow" (the first small step took over
    SLOW_STEP_S)): for the last two the first number is the small step's.

    A first step on a few images (``full=False``) warms the setting up; when that is several times
    slower than the same small step of the best setting so far, the setting loses without a full-size step
    (bf16 without bf16 units can be 10x slower: its full steps would dominate the calibration).
    Otherwise one full warm-up step, then timed full steps."""
    torch.set_num_threads(threads)
    small = min(SCREEN_IMAGES, images_per_step)
    screen = 0.0
    for i in range(2):  # the better of two: the first after a thread-count change starts the pool
        t0 = time.perf_counter()
        step(amp, False)
        sync()
        dt = time.perf_counter() - t0
        screen = max(screen, small / max(dt, 1e-9))
        if best_screen is None and dt > SLOW_STEP_S:  # a network too big to try four ways
            return screen, screen, "slow"
        if best_screen is not None and screen * SCREEN_LOSES * 3 < best_screen:  # far behind at once
            return screen, screen, "screened"
    if best_screen is not None and screen * SCREEN_LOSES < best_screen:
        return screen, screen, "screened"
    if not warm:  # the first full-size step of this precision builds its kernels: not timed
        step(amp, True)
        sync()
    n, t0 = 0, time.perf_counter()
    while n < MAX_TIMED_STEPS:
        step(amp, True)
        sync()
        n += 1
        if time.perf_counter() - t0 >= TIMED_S:
            break
    return n * images_per_step / max(time.perf_counter() - t0, 1e-9), screen, "timed"


def choose(precision: str, threads: int, device: torch.device, workload: dict,
           step: Callable[[torch.dtype | None, bool], None], images_per_step: int,
           log: Callable[[str], None] = lambda s: None, calibrate: bool | None = None) -> Runtime:
    """Decide precision and threads for ``--precision PRECISION --threads THREADS`` (0: unset).

    ``step(amp, full)`` runs one training step of a throw-away copy of the run under autocast ``amp``,
    on the run's batch size (``full``) or on a few images.
    With calibration on, every candidate left open by the flags is timed (or read from the cache)
    and the fastest wins; flags given keep their value. The chosen setting's speed is known either
    way (the duration estimate needs it).
    """
    calibrate = enabled() if calibrate is None else calibrate
    rule_amp, rule_why = resolve_precision(precision, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    current = torch.get_num_threads()
    if device.type != "cpu":  # threads do not matter; the precision rule is the CUDA one
        return Runtime(rule_amp, current, _measure(step, rule_amp, current, images_per_step, sync)[0], rule_why)


    amps = [None, torch.bfloat16] if precision == "auto" and calibrate else [rule_amp]
    all_cores = cores()
    thread_opts = [threads] if threads > 0 else (sorted({1, all_cores}, reverse=True) if calibrate else [current])
    if calibrate and precision == "auto" and rule_amp is not None:
        amps.reverse()  # the rule's choice first: what a network too slow to calibrate keeps
    measured_any = len(amps) * len(thread_opts) > 1
    level, load = load_level()
    key_src = json.dumps({"machine": machine(), "workload": workload, "load": level}, sort_keys=True)
    key = hashlib.sha1(key_src.encode()).hexdigest()[:20]
    path = cache_dir() / CACHE_FILE
    entries = _read_cache(path) if measured_any else {}
    entry = entries.get(key) if isinstance(entries.get(key), dict) else None
    if entry is not None and not (isinstance(entry.get("when"), (int, float)) and time.time() - entry["when"] < MAX_AGE_S):
        entry = None
    cached = dict(entry["timings"]) if entry is not None and isinstance(entry.get("timings"), dict) else {}

    timings: dict[str, float] = {}
    screened: set[str] = set(entry.get("screened", [])) if entry is not None and isinstance(entry.get("screened"), list) else set()
    screen_rates: dict[str, float] = {}
    todo = []  # the settings measured now (not read from the cache)
    slow, warmed, t_start = None, set(), time.perf_counter()
    # every thread count in the first precision, then the other precision at the winning thread count
    # only (the thread count that wins hardly depends on the precision; bf16 without bf16 units is slow)
    plan = [(amps[0], t) for t in thread_opts]
    for a in amps[1:]:
        plan.append((a, None))
    for a, t in plan:
        if t is None:
            t = max(thread_opts, key=lambda th: (setting_name(amps[0], th) not in screened,
                                                  timings[setting_name(amps[0], th)]))
        name = setting_name(a, t)
        if name in cached and isinstance(cached[name], (int, float)) and cached[name] > 0:
            timings[name] = float(cached[name])
            continue
        if not todo and measured_any:
            log(f"measuring precision and threads on this machine (once per machine and model; cached in {path}) ...")
        todo.append(name)
        best = max(timings, key=timings.get) if timings else None
        timings[name], screen_rates[name], status = _measure(step, a, t, images_per_step, sync,
                                                             screen_rates.get(best) if best else None,
                                                             warm=a in warmed)
        if status == "timed":
            warmed.add(a)
        if status == "screened":
            screened.add(name)
        if status == "slow":
            slow = (a, t)
            break
        if measured_any:
            log(f"  {name.replace('x', ', ')} thread(s): {timings[name]:.1f} img/s"
                + (f" on {min(SCREEN_IMAGES, images_per_step)} images, over {SCREEN_LOSES:g}x slower than the best: "
                   "not timed further" if status == "screened" else ""))
    if slow is not None:  # not cached: the next run of this network tries again
        torch.set_num_threads(slow[1])
        n = min(SCREEN_IMAGES, images_per_step)
        return Runtime(slow[0], slow[1], timings[setting_name(*slow)],
                       f"{rule_why if precision == 'auto' else '--precision ' + precision}; one step on {n} images "
                       f"took {n / timings[setting_name(*slow)]:.0f} s, too slow to compare settings; "
                       f"{'--threads ' + str(threads) if threads > 0 else 'all cores'}", timings)
    best = max(((a, t) for a in amps for t in thread_opts if setting_name(a, t) in timings),
               key=lambda at: (setting_name(*at) not in screened, timings[setting_name(*at)]))
    torch.set_num_threads(best[1])
    rate = timings[setting_name(*best)]

    if not measured_any:
        parts = [rule_why if precision == "auto" else f"--precision {precision}",
                 f"--threads {threads}" if threads > 0 else "torch's default threads"]
        return Runtime(best[0], best[1], rate, "; ".join(parts), timings)

    saved = True
    if any(n not in cached for n in timings):
        entries[key] = {"when": time.time(), "timings": {**cached, **timings}, "screened": sorted(screened),
                        "machine": machine(),
                        "workload_of": workload.get("method"), "load": round(load, 2), "level": level}
        saved = _write_cache(path, entries)
    small = f" ({min(SCREEN_IMAGES, images_per_step)}-image step)"
    table = ", ".join(f"{n.replace('x', ' x')} {r:.1f}{small if n in screened else ''}"
                      for n, r in sorted(timings.items(), key=lambda kv: (kv[0] in screened, -kv[1])))
    fixed = ([f"--precision {precision}"] if precision != "auto" else []) + ([f"--threads {threads}"] if threads > 0 else [])
    src = f"measured now in {time.perf_counter() - t_start:.0f} s" if todo else "cached measurement"
    why = (f"auto: fastest of {table} img/s ({src}, machine {level}, load {load:.1f}"
           f"{'' if saved else '; cache not writable'})" + (f"; {', '.join(fixed)} as given" if fixed else ""))
    return Runtime(best[0], best[1], rate, why, timings)


def format_duration(seconds: float) -> str:
    s = max(0, int(round(seconds)))
    if s < 90:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 48 * 3600:
        return f"{s // 3600} h {(s % 3600) // 60:02d} min"
    return f"{s / 86400:.1f} days"


__all__ = ["Runtime", "choose", "cores", "cpu_model", "machine", "load_level", "cache_dir", "enabled",
           "format_duration", "setting_name"]
