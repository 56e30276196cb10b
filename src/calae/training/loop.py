"""The one training loop. It owns every mechanic; methods only describe phases and losses.

Per step: fetch a batch (prefetched by a thread), scale it to the model's range once on the
device, then for each phase: make only the phase's networks trainable, zero their gradients,
one fresh forward of the phase's loss under autocast, backward, average gradients across ranks,
guard against non-finite values (skip and count), clip, step. Then update EMA copies, log, draw
pictures and checkpoint at intervals counted in images seen.
"""
from __future__ import annotations

import copy
import dataclasses
import errno
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from .. import explore
from ..api import inference
from ..config import ConfigError, NetConfig, TrainConfig, from_dict, to_dict
from ..data import open_dataset
from ..data.base import Batch, DataInfo, to_model_range
from ..methods.base import Phase, StepContext
from ..registry import METHODS, load_all
from ..viz.grid import save_gif, save_image
from . import distributed as dist
from .checkpoint import CheckpointError, atomic_write_text, load_snapshot, load_state, save_snapshot, save_state
from .precision import resolve_precision
from .runlock import LOCK_NAME, RunLock, clean_orphans
from .runtime import Runtime, choose, format_duration
from .runtime import SCREEN_IMAGES
from .runtime import cores as _cores
from .runtime import load_level as _load_level
from .stats import StatsWriter, read_stats
from .stream import BatchStream

# Keys that may change between the run that wrote a folder and the command that resumes it.
SCHEDULE_KEYS = {"kimg", "epochs", "log_every_kimg", "sample_every_kimg", "snapshot_every_kimg", "metrics",
                 "metrics_every_kimg", "metrics_n", "prefetch", "device", "max_bad_steps", "threads",
                 "lr_decay_kimg", "lr_decay", "precision", "keep"}  # precision, threads: how fast, not what is trained


# Files that make a folder a run (with or without a readable config.json): never overwritten unasked.
RUN_FILES = ("state.safetensors", "snapshot.safetensors", "stats.jsonl")


class TrainingDiverged(RuntimeError):
    pass


def _read_config(path: Path) -> tuple[dict | None, str]:
    """(config.json's object, "") or (None, why it cannot be used)."""
    if not os.path.lexists(path):
        return None, "is missing"
    if not path.is_file():
        return None, "is not a regular file"
    try:
        old = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, OSError):
        return None, "is not valid JSON"
    if not isinstance(old, dict):
        return None, f"holds a JSON {type(old).__name__}, not an object"
    return old, ""


def absolute_data_spec(spec: str) -> str:
    """A data spec naming a path (a folder, mnist:DIR, video:PATH) with that path made absolute, so a
    run folder's config and snapshot find their data from any working directory."""
    from ..data import parse_spec
    from ..data.base import DataError

    try:
        kind, arg = parse_spec(spec)
    except DataError:
        return spec
    if kind not in ("folder", "mnist", "video") or not arg:
        return spec
    path = os.path.abspath(os.path.expanduser(arg))
    return path if kind == "folder" else f"{kind}:{path}"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible; use --device cpu or auto")
    return torch.device(name)


def lr_scale(kimg: float, milestones: tuple[float, ...], decay: float) -> float:
    """Step schedule: ``decay`` to the number of milestones (kimg) already reached."""
    return decay ** sum(kimg >= m for m in milestones)


def build_optimizers(method, specs) -> dict[str, torch.optim.Optimizer]:
    opts = {}
    for name, spec in specs.items():
        groups = [{"params": list(method.nets[n].parameters()), "lr": spec.lr, "base_lr": spec.lr, "name": n}
                  for n in spec.nets]
        # fused: one pass over each tensor instead of the default per-tensor loop's five or six
        # (30 x 1M-parameter tensors: 28 ms/step vs 173 ms on one CPU thread, benchmarks/bench_train.py)
        opts[name] = torch.optim.Adam(groups, lr=spec.lr, betas=spec.betas, fused=_fused_ok(groups))
    return opts


def _fused_ok(groups) -> bool:
    """torch's fused Adam takes floating-point tensors on CPU, CUDA, MPS and XPU."""
    ps = [p for g in groups for p in g["params"]]
    return bool(ps) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda", "mps", "xpu") for p in ps)


def reset_optimizer_state(opt: torch.optim.Optimizer) -> None:
    """Forget Adam's moments and step counts (a new training stage starts from fresh statistics)."""
    opt.state.clear()


class Trainer:
    """Builds a run from configs and trains it; re-running on the same folder resumes it."""

    def __init__(self, train: TrainConfig, model: dict, out: str | os.PathLike | None, force: bool = False,
                 progress: bool = True, log=None, pictures: bool = True, calibrate: bool = False):
        """``pictures=False`` draws no sample grids, reconstructions, loss curves or progress GIF
        (benchmarks time and evaluate training only). ``calibrate=True`` (the CLI's) decides
        ``precision: auto`` and ``threads: 0`` by timing a few steps (``calae.training.runtime``) when
        work starts, and prints a duration estimate before training."""
        load_all()
        if train.method not in METHODS:
            raise ConfigError(f"unknown method {train.method!r}; choose one of {', '.join(sorted(METHODS))}")
        self.cfg = train
        self.out = Path(out) if out is not None else None
        self.rank, self.world, _ = dist.setup(resolve_device(train.device).type)
        self.device = resolve_device(train.device)
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.main = self.rank == 0
        self.progress = progress and self.main
        self.pictures = pictures
        self.log = (log or (lambda s: print(s, file=sys.stderr))) if self.main else (lambda s: None)
        self.amp, why = resolve_precision(train.precision, self.device)
        # logged when work starts (run, dry_run), so a bad option's one-line error stands alone
        self.precision_note = f"precision: {'bf16' if self.amp is not None else 'fp32'} ({why})"
        if train.threads > 0:
            torch.set_num_threads(train.threads)

        train.data = absolute_data_spec(train.data)
        self.dataset = open_dataset(train.data, resolution=train.resolution, channels=train.channels,
                                    n=train.n_data, seed=train.seed, fit=train.fit, download=train.download)
        cls = METHODS[train.method]
        self.model_cfg = from_dict(cls.Config, model, f"{train.method} config")
        if isinstance(self.model_cfg, NetConfig):
            self._resolve_stem(model)
        torch.manual_seed(train.seed)
        self.method = cls(self.model_cfg, self.dataset.info).to(self.device)
        if self.method.conv and self.device.type in ("cpu", "cuda"):
            self.method.to(memory_format=torch.channels_last)
        dist.broadcast_module(self.method)
        dist.seed_rank(train.seed)  # same weights, a different random stream per rank (world > 1)
        self.optimizers = build_optimizers(self.method, self.method.optimizers())
        self.phases = self.method.phases()
        self.total_kimg = train.kimg
        if train.epochs is not None:
            self.total_kimg = train.epochs * len(self.dataset) / 1000.0
        self.images_per_step = train.batch_size * self.world
        self.total_steps = max(1, math.ceil(self.total_kimg * 1000 / self.images_per_step))
        self.resolved = {
            "method": train.method,
            "train": json.loads(json.dumps(to_dict(train))),  # JSON types: compares equal to config.json
            "model": json.loads(json.dumps(to_dict(self.model_cfg))),
            "info": to_dict(self.dataset.info),
            "precision": "bf16" if self.amp is not None else "fp32",
            "world_size": self.world,
        }
        if train.epochs is not None:  # the budget the epochs came to, not the unused default
            self.resolved["train"]["kimg"] = round(self.total_kimg, 6)
        self.counters = {"step": 0, "kimg": 0.0, "skipped": 0, "frames": [], "time_s": 0.0}
        self.force = force
        self.calibrate = calibrate
        self.runtime: Runtime | None = None

    # ---- precision, threads and duration (measured) ----------------------------------------------
    def _resolve_stem(self, model: dict) -> None:
        """``stem=auto`` becomes this data's choice, except in a folder whose run predates the
        option (its nets have the full stem), so the same command resumes it."""
        if self.model_cfg.stem == "auto" and "stem" not in model and self.out is not None:
            old, _ = _read_config(self.out / "config.json")
            old_model = old.get("model") if isinstance(old, dict) else None
            if isinstance(old_model, dict) and type(self.model_cfg).upgrade_saved(old_model) is not old_model:
                self.model_cfg.stem = "full"
        self.model_cfg.resolve_stem(self.dataset.info)

    def setup_runtime(self) -> Runtime | None:
        """With ``calibrate``: choose precision and threads by measurement (cached per machine) and
        know the speed of a training step; None without it or under torchrun (one process per core)."""
        if self.runtime is not None or not self.calibrate or self.world > 1:
            return self.runtime
        workload = {"method": self.cfg.method, "model": self.resolved["model"], "info": self.resolved["info"],
                    "batch_size": self.cfg.batch_size, "device": self.device.type}
        try:
            rt = choose(self.cfg.precision, self.cfg.threads, self.device, workload, self._probe_step,
                        self.images_per_step, self.log)
            self._stage_rates = self._measure_stages(rt)
        finally:
            self._probe = None
        self.runtime, self.amp = rt, rt.amp
        self._data_cost = self._measure_data()
        self.precision_note = rt.line()
        self.resolved["precision"] = rt.precision
        self.resolved["threads"] = rt.threads
        return rt

    def stages(self, start: int | None = None) -> list[tuple[tuple[str, ...], int, int]]:
        """The rest of the run (from step ``start``, default the next) cut where the set of active
        phases changes (a warm-up ending, a stage switching on): (active phase names, first step,
        number of steps) per stage. A phase's ``every`` does not cut: its steps count at their rate."""
        start = self.counters["step"] if start is None else start
        if start >= self.total_steps:
            return []
        if all(ph.active is None for ph in self.phases):
            return [(tuple(ph.name for ph in self.phases), start, self.total_steps - start)]
        segs: list[list] = []
        for step in range(start, self.total_steps):
            ctx = self.context(step)
            key = tuple(ph.name for ph in self.phases if ph.active is None or ph.active(ctx))
            if segs and segs[-1][0] == key:
                segs[-1][2] += 1
            else:
                segs.append([key, step, 1])
        return [tuple(sg) for sg in segs]

    def _measure_stages(self, rt: Runtime) -> dict[tuple[str, ...], float]:
        """img/s of each stage other than the one the calibration timed (its mid-run step), in the
        chosen precision and threads: the warm-up of Soft-IntroVAE runs about 4x faster than its
        introspective steps, so one rate would mislead the duration estimate."""
        probe = self._probe_base() + 1  # the calibration's first timed step
        stages = self.stages(0)
        rates: dict[tuple[str, ...], float] = {}
        timed = {key for key, first, n in stages if first <= probe < first + n}
        for key, first, n in stages:
            if key in rates or key in timed or not rt.img_per_s:
                continue
            self._probe_at = first + n // 2
            try:
                self._probe_step(rt.amp)  # the first step of phases not run yet pays their start-up
                t0, k = time.perf_counter(), 0
                while k < 2 or (k < 8 and time.perf_counter() - t0 < 0.4):
                    self._probe_step(rt.amp)
                    k += 1
                rates[key] = k * self.images_per_step / (time.perf_counter() - t0)
            finally:
                self._probe_at = None
        return rates

    def _probe_base(self) -> int:
        """The step probe steps count from: mid-run, or ``_probe_at`` while a stage is timed."""
        at = getattr(self, "_probe_at", None)
        return self.total_steps // 2 if at is None else at

    def _probe_step(self, amp, full: bool = True) -> None:
        """One training step of a throw-away copy of the run (networks, optimizers, a real batch, or
        its first few images when not ``full``) under autocast ``amp``, at a mid-run step (or at
        ``_probe_at``); the run's weights and random streams are untouched."""
        if getattr(self, "_probe", None) is None:
            m = copy.deepcopy(self.method)
            self._probe = (m, build_optimizers(m, m.optimizers()), m.phases(), self.batch())
            self._probe_n = 0
        m, opts, phases, batch = self._probe
        if not full:
            k = min(SCREEN_IMAGES, len(batch))
            batch = Batch(batch.x[:k], None if batch.y is None else batch.y[:k],
                          None if batch.params is None else batch.params[:k])
        self._probe_n += 1  # consecutive mid-run steps: phases due every k steps count at their rate
        saved = self.method, self.optimizers, self.phases, self.amp
        self.method, self.optimizers, self.phases, self.amp = m, opts, phases, amp
        try:
            with torch.random.fork_rng(devices=[torch.cuda.current_device()] if self.device.type == "cuda" else []):
                self.train_step(batch, self.context(self._probe_base() + self._probe_n))
        finally:
            self.method, self.optimizers, self.phases, self.amp = saved

    def data_line(self) -> str:
        """'data: SPEC: N images (R px, C channels), ...': how much the run found, said before it trains."""
        info, n = self.dataset.info, len(self.dataset)
        what = (f"{n} images ({info.resolution} px, {info.channels} channel{'s' if info.channels > 1 else ''})"
                if info.kind == "image" else f"{n} points ({info.dim}-D)")
        extra = (f", {info.num_classes} classes" if info.num_classes else "") + (
            f", {self.cfg.epochs:g} epoch{'' if self.cfg.epochs == 1 else 's'} = {self.total_kimg:.4g} kimg" if self.cfg.epochs is not None else "")
        return f"data: {self.cfg.data}: {what}{extra}"

    def _measure_data(self) -> tuple[float, bool]:
        """(seconds to load one batch of items not read before, whether the dataset then keeps them):
        the data thread competes with training for the cores while it renders or decodes."""
        bs = min(self.cfg.batch_size, len(self.dataset))
        start = max(0, len(self.dataset) - bs)  # the probe step read the first items
        idx = torch.arange(start, start + bs)
        t0 = time.perf_counter()
        self.dataset.get(idx)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.dataset.get(idx)
        again = time.perf_counter() - t0
        return first * self.cfg.batch_size / max(bs, 1), again < 0.3 * first

    def estimate_seconds(self, plan: list[tuple[float, float]] | None = None) -> float | None:
        """Seconds the rest of the budget takes: measured step speed, plus the data thread's loading
        where it competes with training for the cores (no core left free by training and other
        processes' load), else the larger of the two."""
        rt = self.runtime
        if rt is None or not rt.img_per_s:
            return None
        left_img = max(0.0, self.total_steps * self.images_per_step - self.counters["kimg"] * 1000.0)
        compute = sum(img / rate for img, rate in (plan or self._stage_plan()))
        per_batch, kept = getattr(self, "_data_cost", (0.0, True))
        new_items = min(len(self.dataset), left_img) if kept else left_img
        data = new_items / self.cfg.batch_size * per_batch
        spare = _cores() - _load_level()[1]  # cores other processes leave free
        return compute + data if rt.threads + 1 > spare else max(compute, data)

    def _stage_plan(self) -> list[tuple[float, float]]:
        """(images left, img/s) per remaining stage; stages not timed separately (one stage, or an
        old measurement) take the calibrated rate."""
        rates, base = getattr(self, "_stage_rates", {}), self.runtime.img_per_s
        return [(n * self.images_per_step, rates.get(key, base)) for key, _, n in self.stages()] or [(0.0, base)]

    def estimate_line(self) -> str | None:
        """'estimated duration: K kimg ... about T' from measurements on this machine (None when not measured)."""
        if self.runtime is None or not self.runtime.img_per_s:
            return None
        plan = self._stage_plan()
        secs = self.estimate_seconds(plan)
        left = max(0.0, self.total_steps * self.images_per_step / 1000.0 - self.counters["kimg"])
        speed = (f" at {self.runtime.img_per_s:.1f} img/s" if len(plan) == 1 else
                 ", " + " then ".join(f"{img / 1000:.3g} at {rate:.1f} img/s" for img, rate in plan))
        return (f"estimated duration: {left:.3g} kimg{speed} (measured here, "
                f"with data loading) = about {format_duration(secs)}, plus pictures and checkpoints")

    def set_budget(self, kimg: float) -> None:
        """Change the training budget before ``run`` (the demo sets it from seconds on this machine)."""
        self.cfg.kimg, self.cfg.epochs = kimg, None
        self.total_kimg = kimg
        self.total_steps = max(1, math.ceil(kimg * 1000 / self.images_per_step))
        self.resolved["train"]["kimg"], self.resolved["train"]["epochs"] = kimg, None

    # ---- run folder ----------------------------------------------------------------------------
    def _prepare_folder(self) -> bool:
        """Lock, check and create the run folder; returns True when resuming. Rank 0 decides (it
        is the only writer and holds the folder's lock); every rank learns the outcome."""
        err, resume = None, False
        if self.main:
            try:
                resume = self._open_folder()
            except Exception as e:  # every rank must hear about it, or the others wait forever
                err = e
        if dist.any_rank(err is not None):
            raise err if err is not None else ConfigError(f"{self.out}: rank 0 refused the run folder (see its error)")
        return dist.any_rank(resume)

    def _open_folder(self) -> bool:
        out = self.out
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} is a file, not a run folder; give the path of a folder (new or a run)")
        out.mkdir(parents=True, exist_ok=True)
        self._lock = RunLock(out).acquire()
        removed = clean_orphans(out)
        if removed:
            self.log(f"removed {len(removed)} temporary file(s) left by an interrupted writer in {out}")
        cfg_path = out / "config.json"
        have = [n for n in RUN_FILES if os.path.lexists(out / n)]
        old, why = _read_config(cfg_path)
        if old is None and (have or why != "is missing"):
            # run files whose config cannot be read: a run we cannot check against, never overwritten
            if not self.force:
                raise ConfigError(f"{out} holds a run ({', '.join(have) or 'config.json'}) but no readable config.json "
                                  f"(it {why}), so this config cannot be checked against it; use another --out, or "
                                  f"pass --force to start over (the old files are moved to {out}.previous-N)")
            self._move_aside()
        elif old is not None:
            if isinstance(old.get("model"), dict) and isinstance(self.model_cfg, NetConfig):
                old["model"] = type(self.model_cfg).upgrade_saved(old["model"])
            diff = _config_diff(old, self.resolved)
            if diff and not self.force:
                raise ConfigError(f"{out} holds a run with a different config ({', '.join(diff[:6])}); "
                                  "use another --out or pass --force to start over (the old run is kept aside)")
            if self.force:
                self._move_aside()
            elif (out / "state.safetensors").is_file():
                return True
            elif "snapshot.safetensors" in have or "state.safetensors" in have:
                raise ConfigError(f"{out} holds a run whose state.safetensors is missing (it has "
                                  f"{', '.join(have)}), so it cannot be resumed; restore the file, or pass --force to "
                                  f"start over (the old files are moved to {out}.previous-N)")
            elif "stats.jsonl" in have:  # killed before its first checkpoint: nothing to resume
                (out / "stats.jsonl").unlink()
                self.log(f"{out} has no checkpoint yet: starting over")
        (out / "samples").mkdir(parents=True, exist_ok=True)
        atomic_write_text(cfg_path, json.dumps(self.resolved, indent=2))
        return False

    def _move_aside(self) -> None:
        """--force: move everything in the folder but its lock to OUT.previous-N (the lock is held
        throughout, so no other writer can slip in)."""
        out = self.out
        entries = [e for e in os.listdir(out) if e != LOCK_NAME]
        if not entries:
            return
        k = 1
        while os.path.lexists(f"{out}.previous-{k}"):
            k += 1
        prev = Path(f"{out}.previous-{k}")
        prev.mkdir()
        for e in entries:
            os.rename(out / e, prev / e)
        self.log(f"--force: moved the previous run to {prev}")

    def _release_folder(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()
            self._lock = None

    def _init_from(self) -> str:
        """Start from another run's networks (``init_from``); a fresh run only, never on resume."""
        from .checkpoint import copy_networks

        return copy_networks(self.cfg.init_from, self.method, self.cfg.init_nets)

    def _resume(self) -> None:
        self.counters = load_state(self.out / "state.safetensors", self.method, self.optimizers)
        self._checkpoint_kimg = self.counters["kimg"]
        self.log(f"resuming {self.out} at {self.counters['kimg']:.2f} kimg (step {self.counters['step']})")
        if self.counters["step"] >= self.total_steps and self.main:
            # a finished run: nothing will rewrite its snapshot, so check that it is intact
            try:
                load_snapshot(self.out / "snapshot.safetensors")
            except CheckpointError as e:
                save_snapshot(self.method, self.out / "snapshot.safetensors", self.resolved["train"],
                              {"kimg": self.counters["kimg"], "step": self.counters["step"]})
                self.log(f"the snapshot was damaged ({e}); rewritten from state.safetensors")

    def _checkpoint(self) -> None:
        rng = dist.gather_rng_states()  # every rank calls it: each resumes its own random stream
        if not self.main:
            return
        bad = [k for k, v in self.method.state_dict().items() if v.is_floating_point() and not bool(v.isfinite().all())]
        if bad:  # never replace a good checkpoint with broken weights
            raise TrainingDiverged(f"training diverged: non-finite weights ({bad[0]}) at {self.counters['kimg']:.2f} "
                                   f"kimg; {self._last_checkpoint_note()}; {self._divergence_advice()}")
        save_state(self.out / "state.safetensors", self.method, self.optimizers, self.counters, rng)
        save_snapshot(self.method, self.out / "snapshot.safetensors", self.resolved["train"],
                      {"kimg": self.counters["kimg"], "step": self.counters["step"]})
        self._checkpoint_kimg = self.counters["kimg"]

    def _last_checkpoint_note(self) -> str:
        k = getattr(self, "_checkpoint_kimg", None)
        if k is None:
            return f"no checkpoint was written yet in {self.out}"
        return f"the last good checkpoint in {self.out} (at {k:.2f} kimg) is intact"

    def _divergence_advice(self) -> str:
        fp32 = "" if self.amp is None else " or train in fp32 (--precision fp32)"
        return (f"to lower the learning rate, start a new run from this one's networks (--out NEW --init-from "
                f"{self.out} --lr SMALLER){fp32}")

    # ---- mechanics -----------------------------------------------------------------------------
    def prepare(self, b: Batch) -> Batch:
        """A batch of dataset items (uint8 or points) -> the model's range and layout on the device."""
        b = b.to(self.device)
        x = to_model_range(b.x, self.method.value_range)
        if self.method.conv and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return Batch(x, b.y, b.params)

    def batch(self, n: int | None = None, start: int = 0) -> Batch:
        """Items start .. start+n of the dataset, prepared (tests, benchmarks, dry runs)."""
        n = self.cfg.batch_size if n is None else n
        idx = torch.arange(start, min(start + n, len(self.dataset)))
        return self.prepare(self.dataset.get(idx))

    def context(self, step: int | None = None) -> StepContext:
        """The StepContext of optimisation step ``step`` (default: the next one)."""
        step = self.counters["step"] if step is None else step
        return StepContext(step, step * self.images_per_step / 1000.0, self.total_kimg)

    def set_trainable(self, names: tuple[str, ...]) -> None:
        """requires_grad on exactly the named networks (the phase's), off on every other."""
        for n, net in self.method.nets.items():
            net.requires_grad_(n in names)

    def phase_loss(self, phase: Phase, batch: Batch, ctx: StepContext) -> dict:
        """The phase's loss dict from one fresh forward, under the precision the phase declares,
        with only its networks trainable (no backward, no step)."""
        self.set_trainable(phase.nets)
        amp = None if phase.precision == "fp32" else self.amp
        with torch.autocast(self.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            return phase.loss(self.method, batch, ctx)

    def run_phase(self, phase: Phase, batch: Batch, ctx: StepContext) -> dict[str, float] | None:
        """One update of one phase. Returns the logged values (also added to ``ctx.logged``), or
        None when the update was skipped (non-finite loss or gradient on any rank)."""
        opts = [self.optimizers[n] for n in phase.optimizer_names]
        self.set_trainable(phase.nets)
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        params = [p for n in phase.nets for p in self.method.nets[n].parameters()]
        out = self.phase_loss(phase, batch, ctx)
        loss = out["loss"]
        # one host synchronisation per phase (the skip decision), not four: a non-finite loss
        # still runs backward (its gradients are non-finite too, and all of them are dropped)
        bad = (~torch.isfinite(loss.detach())).to(torch.float32).reshape(())
        loss.backward()
        bad = dist.allreduce_grads(params, bad)
        if self.cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        else:  # clipping off: only finiteness matters, no rescaling pass over the gradients
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        if bool((bad > 0) | ~torch.isfinite(norm)):
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            ctx.skipped = ctx.skipped + (phase.name,)
            return None
        for opt in opts:
            opt.step()
        res = {f"{phase.name}/{k}": float(v.detach()) for k, v in out.items()}
        ctx.logged.update(res)
        return res

    def due(self, phase: Phase, ctx: StepContext) -> bool:
        """Whether ``phase`` runs at this step (its ``every`` and its ``active`` gate)."""
        return not (ctx.step % phase.every or (phase.active is not None and not phase.active(ctx)))

    def train_step(self, batch: Batch, ctx: StepContext | None = None) -> StepContext:
        """Every due phase of one optimisation step on ``batch``, then the method's ``on_step_end``.
        Does not advance the counters or update EMA copies (``run`` does). Returns the context,
        whose ``logged`` and ``skipped`` say what happened."""
        ctx = ctx or self.context()
        for ph in self.phases:
            if self.due(ph, ctx):
                self.run_phase(ph, batch, ctx)
        if self.world > 1:  # every rank's schedules and gates see (and rank 0 logs) the mean over ranks
            keys = sorted(ctx.logged)  # the same on every rank: a skip is decided by all ranks together
            ctx.logged = dict(zip(keys, dist.all_mean([ctx.logged[k] for k in keys])))
        with torch.no_grad():
            self.method.on_step_end(ctx)
        return ctx

    def _reset_optimizers_at_new_stage(self, kimg: float) -> None:
        """Reset every optimizer's state when the method's training stage changes (its
        ``optimizer_epoch``); a pure function of kimg, so a resumed run resets where the
        uninterrupted one did."""
        e = self.method.optimizer_epoch(kimg)
        if self._stage is not None and e != self._stage:
            for opt in self.optimizers.values():
                reset_optimizer_state(opt)
            self.log(f"new training stage {e} at {kimg:.2f} kimg: optimizer state reset")
        self._stage = e

    def _apply_lr_schedule(self, kimg: float) -> float:
        """Set every group's lr to its base lr times the step schedule's scale at ``kimg``
        (stateless, so a resumed run continues on the same schedule)."""
        scale = lr_scale(kimg, self.cfg.lr_decay_kimg, self.cfg.lr_decay)
        for opt in self.optimizers.values():
            for g in opt.param_groups:
                g["lr"] = g.setdefault("base_lr", g["lr"]) * scale  # checkpoints before the schedule lack base_lr
        return scale

    def _update_ema(self) -> None:
        hl = self.method.ema_halflife_kimg()
        if not len(self.method.ema) or hl <= 0:
            return
        beta = 0.5 ** (self.images_per_step / (hl * 1000.0))
        with torch.no_grad():
            for n, ema in self.method.ema.items():
                src = self.method.nets[n]
                torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in src.parameters()], 1.0 - beta)
                for be, b in zip(ema.buffers(), src.buffers()):
                    be.copy_(b)

    def _pictures(self, final: bool = False) -> None:
        if not (self.main and self.pictures):
            return
        kimg = self.counters["kimg"]
        tag = f"{int(round(kimg * 1000)):09d}"
        if self.dataset.info.kind != "image":
            return
        with inference(self.method):
            grid = explore.sample_grid(self.method, 64, seed=self.cfg.seed)
            rec = explore.recon_grid(self.method, self._fixed_real) if self.method.has_encoder else None
        save_image(grid, self.out / "samples" / f"fakes{tag}.png")
        if rec is not None:
            save_image(rec, self.out / "samples" / f"reals{tag}.png")
            save_image(rec, self.out / "reconstructions.png")
        if not self.counters["frames"] or self.counters["frames"][-1] != tag:
            self.counters["frames"].append(tag)
        save_image(grid, self.out / "samples.png")
        self.stats.image("samples", grid, kimg)

    def _finish_pictures(self) -> None:
        if not (self.main and self.pictures):
            return
        from ..viz.curves import plot_losses

        plot_losses(read_stats(self.out / "stats.jsonl"), self.out / "losses.png")
        if self.dataset.info.kind == "image" and self.counters["frames"]:
            from PIL import Image

            frames = []
            for tag in self.counters["frames"][-60:]:
                p = self.out / "samples" / f"fakes{tag}.png"
                if p.exists():
                    frames.append(torch.from_numpy(__import__("numpy").array(Image.open(p).convert("RGB"))).permute(2, 0, 1))
            if frames:
                save_gif(frames + [frames[-1]] * 5, self.out / "progress.gif", duration_ms=150)
                from ..viz.video import save_video, video_available

                if video_available():  # the same movie without the GIF's 256 colours (calae[video])
                    save_video(frames + [frames[-1]] * 5, self.out / "progress.mp4", fps=1000 / 150)

    def _metrics(self) -> dict:
        names = [m for m in self.cfg.metrics.split(",") if m]
        if not names or not self.main:
            return {}
        from ..metrics import evaluate

        return evaluate(self.method, self.dataset, names, n=self.cfg.metrics_n, seed=self.cfg.seed,
                        device=self.device)

    # ---- entry points --------------------------------------------------------------------------
    def dry_run(self) -> dict:
        """Print the config and a parameter table, run one step of each phase, write nothing."""
        self.setup_runtime()
        self.log(json.dumps(self.resolved, indent=2))
        self.log(parameter_table(self.method))
        self.log(self.precision_note)
        self.log(self.data_line())
        estimate = self.estimate_line()
        if estimate:
            self.log(estimate)
        if self.cfg.init_from:
            self.log(self._init_from())
        batch = self.batch()
        ctx = self.context(0)
        res = {}
        for ph in self.phases:
            r = self.run_phase(ph, batch, ctx)
            if r is None:
                raise TrainingDiverged(f"phase {ph.name} gave a non-finite loss on the first step")
            res.update(r)
        self.log("one step of each phase: " + ", ".join(f"{k}={v:.4g}" for k, v in res.items()))
        return res

    def run(self, stop_at_step: int | None = None, time_limit_s: float | None = None) -> dict:
        """Train to the budget (or stop early at a step / after a training-time limit, with a
        checkpoint, as benchmarks and tests do). Returns counts and timings. The run folder is
        locked (one writer) until it returns."""
        try:
            return self._run(stop_at_step, time_limit_s)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            raise CheckpointError(f"no space left on the disk of {self.out}; {self._last_checkpoint_note()}; free "
                                  "space and rerun the same command to resume") from None
        finally:
            self._release_folder()

    def _run(self, stop_at_step: int | None, time_limit_s: float | None) -> dict:
        # init_from before the folder is touched: a bad source or a shape mismatch writes nothing
        init_msg = (self._init_from() if self.cfg.init_from and (self.force or not (self.out / "state.safetensors").exists())
                    else None)
        resumed = self._prepare_folder()
        if self.setup_runtime() is not None and not resumed and self.main:
            atomic_write_text(self.out / "config.json", json.dumps(self.resolved, indent=2))  # the measured choice
        self.log(self.precision_note)
        if resumed:
            self._resume()  # the resumed state holds the initialised-then-trained weights
        elif init_msg:
            self.log(init_msg)
        self.log(self.data_line())
        estimate = self.estimate_line()
        if estimate:
            self.log(estimate)
        self.stats = StatsWriter(self.out, self.counters["kimg"] if resumed else None) if self.main else None
        self._fixed_real = (explore.load_real(self.method, self.dataset, 16, self.cfg.seed).x
                            if self.dataset.info.kind == "image" else None)
        c, cfg = self.counters, self.cfg
        self.method.train()
        stream = BatchStream(self.dataset, cfg.batch_size, cfg.seed, c["step"], self.rank, self.world,
                             cfg.prefetch, pin=self.device.type == "cuda")
        bar = None
        if self.progress:
            from tqdm import tqdm

            end_kimg = self.total_steps * self.images_per_step / 1000.0
            digits = 1 if end_kimg >= 10 else 2 if end_kimg >= 1 else 3  # a short run's bar still moves
            bar = tqdm(total=round(end_kimg, 3), initial=round(min(c["kimg"], end_kimg), 3), unit="kimg",
                       bar_format=f"{{l_bar}}{{bar}}| {{n:.{digits}f}}/{{total:.{digits}f}} kimg "
                                  "[{elapsed}<{remaining}]{postfix}",
                       dynamic_ncols=True, file=sys.stderr)
        next_log = _next_multiple(c["kimg"], cfg.log_every_kimg)
        next_pic = _next_multiple(c["kimg"], cfg.sample_every_kimg)
        next_snap = _next_multiple(c["kimg"], cfg.snapshot_every_kimg)
        next_met = _next_multiple(c["kimg"], cfg.metrics_every_kimg)
        # the logging window's partial sums live in the counters, so a checkpoint taken between two
        # log steps carries them and a resumed run logs the same means as an uninterrupted one
        win = c.setdefault("log_window", {"sums": {}, "counts": {}})
        acc, acc_n = win["sums"], win["counts"]
        bad_streak, t_last, img_last, wait_last = 0, time.perf_counter(), c["kimg"], 0.0
        if c["step"] == 0 and self.main:
            self._pictures()
        # the stage of the step before this one: a resumed run resets optimizers where the
        # uninterrupted run did (at the first step of a new stage), not again at the resume point
        self._stage = self.method.optimizer_epoch(self.context(c["step"] - 1).kimg) if c["step"] > 0 else None
        try:
            while c["step"] < self.total_steps:
                if stop_at_step is not None and c["step"] >= stop_at_step:
                    break
                if time_limit_s is not None and dist.any_rank(c["time_s"] >= time_limit_s):  # ranks stop together
                    stop_at_step = c["step"]
                    break
                t0 = time.perf_counter()
                batch = self.prepare(stream.next())
                ctx = self.context()
                scale = self._apply_lr_schedule(c["kimg"])
                self._reset_optimizers_at_new_stage(c["kimg"])
                self.train_step(batch, ctx)
                for k, v in ctx.logged.items():
                    acc[k] = acc.get(k, 0.0) + v
                    acc_n[k] = acc_n.get(k, 0) + 1
                step_ok = not ctx.skipped
                if step_ok:
                    bad_streak = 0
                else:
                    c["skipped"] += 1
                    bad_streak += 1
                    if bad_streak >= cfg.max_bad_steps:
                        raise TrainingDiverged(
                            f"training diverged: {bad_streak} consecutive steps with non-finite losses or "
                            f"gradients at {c['kimg']:.2f} kimg; {self._last_checkpoint_note()}; "
                            f"{self._divergence_advice()}")
                dist.sync_buffers(self.method.nets)  # BatchNorm statistics agree before EMA copies them
                self._update_ema()
                c["step"] += 1
                c["kimg"] = c["step"] * self.images_per_step / 1000.0
                c["time_s"] += time.perf_counter() - t0
                done = c["step"] >= self.total_steps
                if c["kimg"] >= next_log or done:
                    now = time.perf_counter()
                    rate = (c["kimg"] - img_last) * 1000 / max(now - t_last, 1e-9)
                    rec = {"kimg": round(c["kimg"], 4), "step": c["step"], "img_per_s": round(rate, 2),
                           "skipped": c["skipped"],
                           "data_wait": round((stream.wait_s - wait_last) / max(now - t_last, 1e-9), 4)}
                    if cfg.lr_decay_kimg:
                        rec["lr_scale"] = scale  # of the last step
                    rec.update({k: acc[k] / acc_n[k] for k in acc})
                    if self.main:
                        self.stats.write(rec)
                    if bar is not None:
                        bar.set_postfix_str(_postfix(rec), refresh=False)
                    acc.clear()
                    acc_n.clear()
                    t_last, img_last, wait_last = now, c["kimg"], stream.wait_s
                    next_log = _next_multiple(c["kimg"], cfg.log_every_kimg)
                if bar is not None:
                    if acc and not done and c["kimg"] < next_log:  # losses from the first steps, not only per log
                        now = time.perf_counter()
                        bar.set_postfix_str(_postfix({"img_per_s": (c["kimg"] - img_last) * 1000 / max(now - t_last, 1e-9),
                                                      **{k: acc[k] / acc_n[k] for k in acc}}), refresh=False)
                    bar.n = round(min(c["kimg"], end_kimg), 3)  # set, not add: no float drift past the total
                    bar.update(0)  # redraws at most every mininterval
                if cfg.metrics_every_kimg and (c["kimg"] >= next_met or done):
                    m = self._metrics()
                    if m and self.main:
                        self.stats.write({"kimg": round(c["kimg"], 4), **{f"metrics/{k}": v for k, v in m.items()}})
                    self.method.train()
                    next_met = _next_multiple(c["kimg"], cfg.metrics_every_kimg)
                if c["kimg"] >= next_pic or done:
                    self._pictures()
                    next_pic = _next_multiple(c["kimg"], cfg.sample_every_kimg)
                if c["kimg"] >= next_snap or done:
                    self._checkpoint()
                    next_snap = _next_multiple(c["kimg"], cfg.snapshot_every_kimg)
        except KeyboardInterrupt:
            self.log(f"interrupted at {c['kimg']:.2f} kimg; the last checkpoint is kept: run the same command to resume")
            raise
        finally:
            stream.close()
            if bar is not None:
                bar.close()
        if stop_at_step is not None and c["step"] < self.total_steps:
            self._checkpoint()  # on every rank: it gathers their RNG states
        if self.main:
            self._finish_pictures()
            self.stats.close()
        dist.check_in_sync(self.method)
        wall = c["time_s"]
        return {"steps": c["step"], "kimg": c["kimg"], "skipped": c["skipped"], "time_s": wall,
                "data_wait_s": stream.wait_s, "out": str(self.out)}


def _next_multiple(kimg: float, every: float) -> float:
    if every <= 0:
        return float("inf")
    return (math.floor(kimg / every + 1e-9) + 1) * every


def _postfix(rec: dict) -> str:
    parts = [f"{rec['img_per_s']:.0f} img/s"]
    for k, v in rec.items():
        if "/" in k and k.split("/")[1] in ("loss", "rec", "kl"):
            parts.append(f"{k}={v:.4g}")
    return " ".join(parts[:5])


def _config_diff(old: dict, new: dict) -> list[str]:
    diff = []
    for section in ("method", "model", "info", "train", "world_size"):
        a, b = old.get(section), new.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if section == "train" and k in SCHEDULE_KEYS:
                    continue
                if section == "train" and k == "data" and isinstance(a.get(k), str) and isinstance(b.get(k), str):
                    if absolute_data_spec(a[k]) == absolute_data_spec(b[k]):  # runs from before paths were absolute
                        continue
                if a.get(k) != b.get(k):
                    diff.append(f"{section}.{k}: {a.get(k)!r} -> {b.get(k)!r}")
        elif a != b:
            diff.append(f"{section}: {a!r} -> {b!r}")
    return diff


def parameter_table(method) -> str:
    rows = [("network", "parameters", "trainable in")]
    phases = method.phases()
    for n, net in method.nets.items():
        cnt = sum(p.numel() for p in net.parameters())
        rows.append((n, f"{cnt:,}", ", ".join(ph.name for ph in phases if n in ph.nets) or "-"))
    for n, net in method.ema.items():
        rows.append((f"{n} (EMA)", f"{sum(p.numel() for p in net.parameters()):,}", "-"))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in rows)


def train(train_cfg: TrainConfig, model_cfg: dict, out, force: bool = False, dry_run: bool = False,
          progress: bool = True, stop_at_step: int | None = None, calibrate: bool = False) -> dict:
    trainer = Trainer(train_cfg, model_cfg, out, force=force, progress=progress, calibrate=calibrate)
    try:
        return trainer.dry_run() if dry_run else trainer.run(stop_at_step)
    finally:
        dist.cleanup()
