"""The `calae` command line. Thin: parse, validate, call library functions.

Errors a user can cause (bad paths, options, data, checkpoints) print one line naming the problem
and the fix, exit with status 2 and no traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from . import __version__

DEMO_SECONDS = 120.0  # `calae demo`'s default training time
EPILOG = ("Data specs: fractals[:kali|julia|mandelbrot|mix], mnist:DIR, digits, toy:NAME, "
          "video:PATH[?every=K,start=S,end=S,crops=N,crop=SIDE] (pip install 'calae[video]'), or a folder of images PATH[?crops=N,crop=SIDE] (N fixed random SIDE-pixel crops of each image).")


TRAIN_DESCRIPTION = ("Train a model. Where a setting is given more than once, an explicit flag (or --set) wins "
                     "over --config FILE, the file over --preset, and the preset over the defaults.")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class UserError(Exception):
    pass


def _positive_int(name):
    def conv(s):
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number >= 1, got {s!r}") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {v}")
        return v
    return conv


def _positive_float(name):
    def conv(s):
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number > 0, got {s!r}") from None
        if not v > 0 or v == float("inf"):
            raise argparse.ArgumentTypeError(f"{name} must be a finite number > 0, got {s!r}")
        return v
    return conv


def _keep(s):
    if str(s).strip().lower() == "all":
        return 0
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--keep takes a whole number >= 1 or all, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"--keep must be >= 1 (or all), got {v}")
    return v


def _bool(name):
    def conv(s):
        v = str(s).strip().lower()
        if v in ("1", "true", "yes", "on"):
            return True
        if v in ("0", "false", "no", "off"):
            return False
        raise argparse.ArgumentTypeError(f"{name} takes true or false, got {s!r}")
    return conv


def build_parser() -> argparse.ArgumentParser:
    from .registry import METHODS, load_all

    load_all()
    p = _Parser(prog="calae", description="Adversarial latent autoencoders: train, evaluate and explore.",
                epilog=EPILOG)
    p.add_argument("--version", action="version", version=f"calae {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a model (re-running the same command resumes it)",
                       description=TRAIN_DESCRIPTION, epilog=EPILOG)
    t.add_argument("method", nargs="?", choices=sorted(METHODS),
                   help="method to train (may come from --config instead)")
    t.add_argument("--config", metavar="FILE",
                   help="settings from a .json or .yaml/.yml file (YAML needs PyYAML): the keys of these options "
                        "(batch_size or batch-size, kimg, data, lr, preset, set: [KEY=VALUE, ...], out, ...) and of "
                        "--set, or a run's own config.json (its train and model sections) to repeat that run; "
                        "flags given here win over the file, the file over --preset")
    t.add_argument("--data", help="data spec (default: fractals, or the preset's)")
    t.add_argument("--out", help="run folder (required here or as out: in --config); an existing one with the same "
                   "config is resumed")
    t.add_argument("--resolution", type=_positive_int("--resolution"), help="image side in pixels")
    t.add_argument("--channels", type=int, choices=(1, 3), help="1 (grayscale) or 3 (RGB)")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--kimg", type=_positive_float("--kimg"), help="training budget in thousands of images seen")
    g.add_argument("--epochs", type=_positive_float("--epochs"), help="budget in passes over the data (converted to kimg)")
    t.add_argument("--batch-size", "--batch_size", dest="batch_size", type=_positive_int("--batch-size"),
                   help="images per optimisation step (per process)")
    t.add_argument("--lr", type=_positive_float("--lr"), help="learning rate (shortcut for --set lr=...); step decay: "
                   "--set lr_decay_kimg=[A,B] multiplies it by lr_decay (default 0.1) at A and B kimg")
    t.add_argument("--preset", help="named preset (see `calae list`); flags and --set override it. Without it, a method's "
                   "paper settings for the data apply where a preset declares them (Soft-IntroVAE on toy:NAME); "
                   "'none' turns that off")
    t.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a method or training config key (repeatable; model.KEY / train.KEY to disambiguate)")
    t.add_argument("--precision", choices=("auto", "bf16", "fp32"),
                   help="auto: bf16 autocast where it is fast (CPU AMX/AVX512-BF16, CUDA), else fp32")
    t.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where to train (default auto)")
    t.add_argument("--seed", type=int, help="random seed (data order, initialisation, fixed sample noise)")
    t.add_argument("--threads", type=int, help="torch CPU threads (default: one per core; 1 helps on a busy machine)")
    t.add_argument("--n-data", type=_positive_int("--n-data"), help="procedural dataset size / folder image limit")
    t.add_argument("--fit", choices=("crop", "pad", "stretch"), help="how non-square images become square (default crop)")
    t.add_argument("--download", nargs="?", const=True, default=False, type=_bool("--download"), metavar="BOOL",
                   help="mnist:DIR only: fetch the IDX files into DIR (also written --download True)")
    t.add_argument("--directory", help="the same as --data mnist:DIRECTORY")
    t.add_argument("--gen_lr", type=_positive_float("--gen_lr"), help="aae: learning rate of E and G (--set gen_lr=)")
    t.add_argument("--dis_lr", type=_positive_float("--dis_lr"), help="aae: learning rate of D (--set dis_lr=)")
    t.add_argument("--init-from", metavar="RUN",
                   help="start from the networks of another run (folder or snapshot .safetensors), e.g. a VAE's E,G "
                        "before a GAN; shapes are checked; recorded in config.json and not re-applied on resume")
    t.add_argument("--init-nets", metavar="E,G",
                   help="which networks --init-from copies (default: every network both runs have)")
    t.add_argument("--dry-run", action="store_true",
                   help="print the resolved config and a parameter table, run one step of each phase, exit")
    t.add_argument("--force", action="store_true",
                   help="start over in an existing run folder (the old run is moved to OUT.previous-N)")
    t.add_argument("--keep", type=_keep, metavar="N",
                   help="also keep the N newest checkpoints as snapshots/snapshot-<images>.safetensors (all: every "
                        "one); default: only the latest, snapshot.safetensors. state.safetensors is never deleted")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    s = sub.add_parser("sample", help="random samples from a trained model")
    s.add_argument("run", help="run folder or snapshot .safetensors")
    s.add_argument("--n", type=_positive_int("--n"), help="number of samples (default 64, or rows x columns of --grid)")
    s.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    s.add_argument("--grid", metavar="RxC", help="the picture's rows x columns, e.g. 4x8 (draws R*C samples)")
    s.add_argument("--nrow", type=_positive_int("--nrow"), metavar="C",
                   help="images per row of the picture (default: as square a grid as fits --n)")
    s.add_argument("--truncation", type=float, metavar="PSI",
                   help="truncation psi: pull codes towards the mean code, 1 = none, 0.7 = StyleGAN's pictures "
                        "(alae and calae; other methods have no truncation option)")
    s.add_argument("--temperature", type=_positive_float("--temperature"), default=1.0, metavar="T",
                   help="multiply the prior draw z by T (default 1, as in training; below 1: more typical, "
                        "less varied samples)")
    s.add_argument("--scale", type=_positive_int("--scale"), metavar="N",
                   help="enlarge pictures N times (nearest neighbour; 1: native size); default: the smallest factor that makes them "
                   "at least 512 px wide (at most 8)")
    s.add_argument("--out", required=True, help="output .png (grid) or .npz (raw float arrays)")

    r = sub.add_parser("reconstruct", help="real images next to their reconstructions")
    r.add_argument("run", help="run folder or snapshot .safetensors")
    r.add_argument("--data", help="data spec (default: the run's training data)")
    r.add_argument("--n", type=_positive_int("--n"), default=32, help="number of images (default 32)")
    r.add_argument("--seed", type=int, default=0, help="which images (default 0)")
    r.add_argument("--scale", type=_positive_int("--scale"), metavar="N",
                   help="enlarge pictures N times (nearest neighbour; 1: native size); default: the smallest factor that makes them "
                   "at least 512 px wide (at most 8)")
    r.add_argument("--out", required=True, help="output .png (real/reconstruction rows) or .npz")

    i = sub.add_parser("interpolate", help="linear interpolations in code space between real images (GIF or MP4 + PNG strip)")
    i.add_argument("run", help="run folder or snapshot .safetensors")
    i.add_argument("--data", help="data spec (default: the run's training data)")
    i.add_argument("--steps", type=_positive_int("--steps"), default=16, help="frames per interpolation (default 16)")
    i.add_argument("--pairs", type=_positive_int("--pairs"), default=4, help="pairs shown side by side (default 4)")
    i.add_argument("--seed", type=int, default=0, help="which images (default 0)")
    i.add_argument("--scale", type=_positive_int("--scale"), metavar="N",
                   help="enlarge pictures N times (nearest neighbour; 1: native size); default: the smallest factor that makes them "
                   "at least 512 px wide (at most 8)")
    i.add_argument("--out", required=True, help="output .gif or .mp4 (MP4 needs calae[video]; a .png strip is written beside it)")

    e = sub.add_parser("encode", help="codes of real images, with labels/parameters, as .npz")
    e.add_argument("run", help="run folder or snapshot .safetensors")
    e.add_argument("--data", help="data spec (default: the run's training data)")
    e.add_argument("--n", type=_positive_int("--n"), default=1000, help="number of images (default 1000)")
    e.add_argument("--out", required=True, help="output .npz (codes, labels, params)")

    lt = sub.add_parser("latents", help="2-D map of the latent space (PCA or t-SNE), coloured by label or parameter")
    lt.add_argument("run", help="run folder or snapshot .safetensors")
    lt.add_argument("--data", help="data spec (default: the run's training data)")
    lt.add_argument("--n", type=_positive_int("--n"), default=1000, help="number of images (default 1000)")
    lt.add_argument("--projection", choices=("pca", "tsne"), default="pca", help="2-D projection (default pca)")
    lt.add_argument("--color-by", default="auto", help="label, a parameter name (fractals), none, or auto")
    lt.add_argument("--over-prior", action="store_true",
                    help="the AAE paper's figure: codes over prior samples, coloured by label")
    lt.add_argument("--thumbnails", action="store_true",
                    help="draw the images themselves at their positions (a non-overlapping subset) instead of dots")
    lt.add_argument("--out", required=True, help="output .png (or .npz for the 2-D points)")

    pj = sub.add_parser("project", help="find the codes that reproduce your images best, by optimisation")
    pj.add_argument("run", help="run folder or snapshot .safetensors")
    pj.add_argument("images", nargs="+", help="a folder of images (recursive) or image files")
    pj.add_argument("--steps", type=_positive_int("--steps"), default=200, help="optimisation steps (default 200)")
    pj.add_argument("--lr", type=_positive_float("--lr"), default=0.05, help="Adam learning rate (default 0.05)")
    pj.add_argument("--init", choices=("auto", "encoder", "mean"), default="auto",
                    help="start from the encoder's code of each image, or the mean code of the prior "
                         "(default: the encoder where the model has one)")
    pj.add_argument("--n", type=_positive_int("--n"), default=64, help="at most this many images (default 64)")
    pj.add_argument("--fit", choices=("crop", "pad", "stretch"), default="crop",
                    help="how non-square images become square (default crop)")
    pj.add_argument("--scale", type=_positive_int("--scale"), metavar="N",
                    help="enlarge the picture N times (default: to at least 512 px wide)")
    pj.add_argument("--out", required=True, help="output .npz (codes); the picture target | start | projection "
                    "is written beside it as .png")

    ev = sub.add_parser("eval", help="evaluate a trained model with offline metrics")
    ev.add_argument("run", help="run folder or snapshot .safetensors")
    ev.add_argument("--data", help="data spec (default: the run's training data)")
    ev.add_argument("--metrics", help="comma-separated metric names (default: chosen for the data; see `calae list`)")
    ev.add_argument("--n", type=_positive_int("--n"),
                    help="samples per metric (default: each metric's protocol count, e.g. 2048 images, 5000 toy points)")
    ev.add_argument("--seed", type=int, default=0, help="seed (metrics are deterministic given it)")
    ev.add_argument("--json", action="store_true", help="print one JSON object instead of a table")

    ls = sub.add_parser("list", help="methods, presets, datasets, priors and metrics")
    ls.add_argument("--durations", nargs="*", metavar="PRESET", default=None,
                   help="also estimate how long each preset (or only those named) trains on this machine: a "
                        "few timed steps each, cached like a run's calibration; presets whose data is not here "
                        "(a folder, MNIST files) are timed on fractal images of the same size")

    f = sub.add_parser("fractals", help="render the procedural fractal dataset to PNGs, or a parameter sweep to video")
    f.add_argument("--n", type=_positive_int("--n"), default=64, help="number of images (default 64)")
    f.add_argument("--resolution", type=_positive_int("--resolution"), default=64, help="image side (default 64)")
    f.add_argument("--channels", type=int, choices=(1, 3), default=3, help="1 or 3 (default 3)")
    f.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    f.add_argument("--family", default="any", help="any, kali, julia, mandelbrot or mix (default any)")
    f.add_argument("--supersample", type=_positive_int("--supersample"), default=1, help="k x k samples per pixel")
    f.add_argument("--out", help="output folder (PNGs, params.jsonl, and .preview.png: a grid of the first 64, "
                   "hidden so that training on the folder counts only the images)")
    f.add_argument("--video", metavar="OUT.mp4", help="write a video of one image with --sweep parameters moving "
                   "(.mp4 .webm .mkv .mov; needs calae[video]); OUT.json beside it records how to reproduce it")
    f.add_argument("--sweep", action="append", default=[], metavar="PARAM=A:B",
                   help="with --video: a renderer parameter moved linearly from A to B, e.g. c_re=-0.8:-0.7, "
                        "log_zoom=0:4 (repeatable: c_re and c_im together move c along a line)")
    f.add_argument("--frames", type=_positive_int("--frames"), default=120, help="video frames (default 120)")
    f.add_argument("--fps", type=_positive_float("--fps"), default=30.0, help="video frame rate (default 30)")
    f.add_argument("--index", type=int, default=0, help="with --video: which image of the dataset starts the sweep")

    d = sub.add_parser("demo", help="the README's demo: train a VAE on fractals, write pictures")
    d.add_argument("--out", default="demo", help="output folder (default demo)")
    dg = d.add_mutually_exclusive_group()
    dg.add_argument("--seconds", type=_positive_float("--seconds"), default=DEMO_SECONDS,
                    help=f"training time on this machine (default {DEMO_SECONDS:.0f}); the budget in images is set "
                         "from a few timed steps")
    dg.add_argument("--kimg", type=_positive_float("--kimg"), help="training budget in thousands of images instead")
    d.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="auto: the faster of fp32 and bf16, measured on this machine")
    d.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: the faster of 1 and all "
                   "cores, measured on this machine)")
    d.add_argument("--scale", type=_positive_int("--scale"), metavar="N",
                   help="enlarge pictures N times (nearest neighbour; 1: native size); default: the smallest factor that makes them "
                   "at least 512 px wide (at most 8)")
    _explore_parsers(sub)
    return p


class _Ordered(argparse.Action):
    """Keeps --layer / --transform / --channels in the order given (a transform belongs to the layer
    before it, channels to the transform before them)."""

    def __call__(self, parser, namespace, values, option_string=None):
        getattr(namespace, self.dest).append((option_string.lstrip("-"), values))


def _explore_parsers(sub) -> None:
    x = sub.add_parser("explore", help="the latent-space explorer in the browser (needs pip install 'calae[web]')")
    x.add_argument("run", help="run folder or snapshot .safetensors")
    x.add_argument("--data", help="data spec for the map of codes (default: the run's training data; 'none': no map)")
    x.add_argument("--n", type=_positive_int("--n"), default=1000, help="points on the map (default 1000)")
    x.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1, this machine only; another one prints a warning)")
    x.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    x.add_argument("--seed", type=int, default=0, help="which data items are mapped (default 0)")

    b = sub.add_parser("bend", help="network bending: transforms inside the decoder, at inference only")
    b.add_argument("run", help="run folder or snapshot .safetensors")
    b.set_defaults(steps=[])
    b.add_argument("--layer", dest="steps", action=_Ordered, metavar="L",
                   help="decoder layer the following --transform(s) act after (see --list-layers)")
    b.add_argument("--transform", dest="steps", action=_Ordered, metavar="NAME[:PARAMS]",
                   help="translate:X,Y scale:F rotate:DEG erode:K dilate:K multiply:F threshold:T flip-h flip-v "
                        "invert ablate (repeatable; they chain)")
    b.add_argument("--channels", dest="steps", action=_Ordered, metavar="SPEC",
                   help="channels of the transform before it: all (default), random:P, cluster:K, or 0,3,5")
    b.add_argument("--clusters", type=_positive_int("--clusters"), default=5,
                   help="k-means groups per layer for cluster:K (default 5; saved beside the run)")
    b.add_argument("--config", help="a JSON or YAML list of bends ({layer, transform, params, channels})")
    b.add_argument("--n", type=_positive_int("--n"), default=16, help="images (default 16)")
    b.add_argument("--seed", type=int, default=0, help="which samples (default 0)")
    b.add_argument("--compare", action="store_true", help="put the unbent images above the bent ones")
    b.add_argument("--animate", metavar="PARAM=A:B",
                   help="a GIF (or MP4, with --out .mp4) sweeping one parameter of the last transform that has it, "
                        "e.g. angle=0:360")
    b.add_argument("--frames", type=_positive_int("--frames"), default=24, help="GIF frames for --animate (default 24)")
    b.add_argument("--scale", type=_positive_int("--scale"), metavar="N",
                   help="enlarge pictures N times (nearest neighbour; 1: native size); default: the smallest factor "
                   "that makes them at least 512 px wide (at most 8)")
    b.add_argument("--list-layers", action="store_true", help="print the decoder's layers and their shapes, then exit")
    b.add_argument("--out", help="output .png (.gif with --animate)")


# ---- commands ---------------------------------------------------------------------------------
def cmd_train(a) -> int:
    from .progress import stage
    from .config import TrainConfig, apply_overrides, from_dict, preset, preset_for_data
    from .registry import METHODS
    from .training import train

    fc = None
    if a.config is not None:
        from . import configfile

        fc = configfile.read(a.config, a.method, METHODS)
        a.method = fc.method
        if a.out is None:
            a.out = fc.out
        if a.preset is None:
            a.preset = fc.preset
    if a.method is None:
        raise UserError(f"name the method to train (calae train METHOD ...; one of {', '.join(sorted(METHODS))}) "
                        "or give --config FILE with method: in it")
    if not a.out:
        raise UserError("give --out FOLDER (the run folder), or out: in the --config file")
    file_train, file_model = (fc.train, fc.model) if fc else ({}, {})
    model: dict = {}
    tr: dict = {"method": a.method}
    data = a.data or file_train.get("data")
    if a.preset is None and data:
        a.preset = preset_for_data(a.method, data)
        if a.preset and int(os.environ.get("RANK", "0")) == 0:
            print(f"using preset {a.preset!r}, the paper's settings for --data {data} "
                  f"(flags and --set override it; --preset none for the plain defaults)", file=sys.stderr)
    if a.preset == "none":
        a.preset = None
    if a.preset:
        pr = preset(a.preset)
        if pr["method"] != a.method:
            raise UserError(f"preset {a.preset!r} is for method {pr['method']!r}, not {a.method!r}")
        tr.update(pr["train"])
        model.update(pr["model"])
    tr.update(file_train)  # the file beats the preset ...
    model.update(file_model)
    if "kimg" in file_train and file_train.get("epochs") is None:
        tr.pop("epochs", None)  # the file's budget beats a preset's
    elif file_train.get("epochs") is not None and "kimg" not in file_train:
        tr.pop("kimg", None)
    for key, val in (("data", a.data), ("resolution", a.resolution), ("channels", a.channels), ("kimg", a.kimg),
                     ("epochs", a.epochs), ("batch_size", a.batch_size), ("precision", a.precision),
                     ("device", a.device), ("seed", a.seed), ("threads", a.threads), ("n_data", a.n_data), ("fit", a.fit),
                     ("keep", a.keep)):
        if val is not None:  # ... and explicit flags beat the file
            tr[key] = val
    if a.epochs is not None:
        tr.pop("kimg", None)
    if a.kimg is not None:
        tr.pop("epochs", None)  # the user's budget beats a preset's and the file's
    if a.directory is not None:
        if a.data is not None:
            raise UserError("give --data or --directory (another name for --data mnist:DIR), not both")
        tr["data"] = f"mnist:{a.directory}"
    if a.download:
        tr["download"] = True
    if a.init_from is not None:
        tr["init_from"] = a.init_from
    if a.init_nets is not None:
        tr["init_nets"] = a.init_nets
    if a.lr is not None:
        model["lr"] = a.lr
    for key in ("gen_lr", "dis_lr"):
        if getattr(a, key) is not None:
            if key not in {f.name for f in dataclasses.fields(METHODS[a.method].Config)}:
                raise UserError(f"--{key} is an option of the aae method, not of {a.method!r}")
            model[key] = getattr(a, key)
    _refuse_flag_and_set(a)
    apply_overrides(tr, model, METHODS[a.method].Config, a.sets)
    cfg = from_dict(TrainConfig, tr, "training config")
    stage("training" if not a.dry_run else "checking the config", announce=False)
    progress = not (a.no_progress or (fc is not None and fc.no_progress))
    res = train(cfg, model, a.out, force=a.force, dry_run=a.dry_run, progress=progress, calibrate=True)
    if not a.dry_run and int(os.environ.get("RANK", "0")) == 0:
        print(f"trained {res['kimg']:.2f} kimg in {res['time_s']:.0f} s ({res['skipped']} skipped steps); "
              f"run folder: {res['out']}{_checkpoint_sizes(Path(res['out']))}")
    return 0


def _checkpoint_sizes(out: Path) -> str:
    """' (snapshot 1.2 MB, state 3.5 MB, 3 numbered snapshots 3.6 MB)': what the run keeps on disk."""
    from .training.checkpoint import history

    def mb(n: float) -> str:
        return f"{n / 1e6:.3g} MB" if n < 1e9 else f"{n / 1e9:.3g} GB"

    parts = []
    for name, what in (("snapshot.safetensors", "snapshot"), ("state.safetensors", "state")):
        try:
            parts.append(f"{what} {mb((out / name).stat().st_size)}")
        except OSError:
            pass
    hist = history(out)
    if hist:
        parts.append(f"{len(hist)} numbered snapshot{'s' if len(hist) > 1 else ''} "
                     f"{mb(sum(p.stat().st_size for p in hist))}")
    return f" ({', '.join(parts)})" if parts else ""


_FLAG_KEYS = {"data": "--data", "resolution": "--resolution", "channels": "--channels", "kimg": "--kimg",
              "epochs": "--epochs", "batch_size": "--batch-size", "precision": "--precision", "device": "--device",
              "seed": "--seed", "threads": "--threads", "n_data": "--n-data", "fit": "--fit", "lr": "--lr",
              "gen_lr": "--gen_lr", "dis_lr": "--dis_lr", "init_from": "--init-from", "init_nets": "--init-nets",
              "keep": "--keep"}


def _refuse_flag_and_set(a) -> None:
    """A key given both as a flag and as --set is ambiguous: refused rather than one silently winning."""
    for item in a.sets:
        name = item.partition("=")[0].strip()
        name = name.partition(".")[2] if name.startswith(("model.", "train.")) else name
        flag = _FLAG_KEYS.get(name)
        if flag and getattr(a, flag.lstrip("-").replace("-", "_"), None) is not None:
            raise UserError(f"{flag} and --set {item} both set {name}; give it once")


def _load(run):
    from .api import load

    _stage(f"loading {run}", announce=False)
    return load(run)


def _stage(name: str, announce: bool = True) -> None:
    from .progress import stage

    stage(name, announce)


def _data_for(model, spec: str | None):
    from .data import open_dataset

    train = model.meta.get("train", {})
    spec = spec or train.get("data")
    if not spec:
        raise UserError("this snapshot does not name its data; pass --data SPEC")
    info = model.info
    kw = {"seed": train.get("seed", 0)}
    if info.kind == "image":
        kw.update(resolution=info.resolution, channels=info.channels, fit=train.get("fit", "crop"))
    ds = open_dataset(spec, **kw)
    if ds.info.shape != info.shape:
        raise UserError(f"data {spec!r} has items of shape {ds.info.shape}, the model expects {info.shape}")
    return ds


def _save_arrays(out: str, **arrays) -> None:
    import numpy as np

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{out}.tmp{os.getpid()}.npz"
    np.savez_compressed(tmp, **{k: v for k, v in arrays.items() if v is not None})
    os.replace(tmp, out)


def _check_out(out: str, exts: tuple[str, ...]) -> None:
    """--out names a file with one of ``exts`` (the formats the command writes), not a folder."""
    if out.endswith(("/", os.sep)) or Path(out).is_dir():
        raise UserError(f"--out {out} is a folder; give a file name in it, e.g. {Path(out) / ('out' + exts[0])}")
    if not out.lower().endswith(exts):
        raise UserError(f"--out {out}: this command writes {' or '.join(exts)} files; use one of those extensions")


MAX_OUT_BYTES = 2 << 30  # what one sample / encode command may hold in memory


def cmd_sample(a) -> int:
    from .viz.grid import make_grid, resolve_scale, save_image

    _check_out(a.out, (".png", ".npz"))
    n, nrow = _sample_shape(a)
    m = _load(a.run)
    opts = _sample_options(m, a)
    cap = max(1, MAX_OUT_BYTES // (4 * m.info.numel))
    if a.out.endswith(".png") and m.info.kind == "image":
        cap = min(cap, 4096)  # a 64 x 64 grid
    if n > cap:
        raise UserError(f"--n {n} is more than one {Path(a.out).suffix} file of this model holds (at most {cap}); "
                        "write several files with different --seed values")
    x = draw_samples(m, n, a.seed, a.temperature, **opts)
    if a.out.endswith(".npz"):
        _save_arrays(a.out, samples=x.numpy(), value_range=_range_note(m))
    else:
        if m.info.kind != "image":
            _scatter(x.numpy(), a.out, f"{n} samples")
        else:
            grid = make_grid(m.from_model(x), nrow=nrow)
            save_image(grid, a.out, upscale=resolve_scale(a.scale, grid))
    print(a.out)
    return 0


def _sample_shape(a) -> tuple[int, int | None]:
    """(how many samples, images per row) from --n, --grid RxC and --nrow."""
    if a.grid is None:
        return a.n or 64, a.nrow
    if a.nrow is not None:
        raise UserError("give --grid RxC or --nrow C, not both (--grid already sets the columns)")
    rows, sep, cols = a.grid.lower().partition("x")
    try:
        r, c = int(rows), int(cols)
    except ValueError:
        r = c = 0
    if not sep or r < 1 or c < 1:
        raise UserError(f"--grid takes ROWSxCOLUMNS, e.g. 4x8; got {a.grid!r}")
    if a.n is not None and a.n != r * c:
        raise UserError(f"--grid {a.grid} holds {r * c} samples but --n is {a.n}; give one of them")
    return r * c, c


def _sample_options(m, a) -> dict:
    """The decode options --truncation asks for, checked against what the method declares."""
    if a.truncation is None:
        return {}
    if "psi" not in m.options:
        known = ", ".join(m.options) or "none"
        raise UserError(f"--truncation: {m.name} models have no truncation option (their decode options: {known}); "
                        "it applies to alae and calae, leave it out for this model")
    return {"psi": m.options["psi"].check(a.truncation)}


def draw_samples(m, n: int, seed: int = 0, temperature: float = 1.0, **options):
    """n samples in the model's range: ``Model.sample_tensor`` at temperature 1, else the prior draw
    z (seeded as ``sample`` seeds it) times ``temperature``, mapped to w by F for ALAE-type models,
    then decoded (with the decoder's fixed noise draw)."""
    import torch

    if temperature == 1.0:
        return m.sample_tensor(n, seed, **options)
    meth = m.method
    if m.latent.name == "z":
        codes = m.sample_latents(n, seed) * temperature  # the decoder takes the prior's z itself
    elif hasattr(getattr(meth, "prior", None), "sample") and "F" in getattr(meth, "nets", {}):
        g = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            z = meth.prior.sample(int(n), g).to(m.device) * temperature
            codes = meth.net("F")(z).float().cpu()
    else:
        raise UserError(f"--temperature: this {m.name} model does not decode from its prior draw; leave it at 1")
    return m.decode_tensor(codes, **options)


def _range_note(m):
    """What the float arrays of a .npz hold: 'tanh' (images in [-1, 1]), 'unit' ([0, 1]) or 'points'."""
    import numpy as np

    return np.array(m.value_range if m.info.kind == "image" else "points")


def _scatter(points, out, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .viz.grid import save_figure

    fig, ax = plt.subplots(figsize=(5, 5), dpi=110)
    ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.5)
    ax.set_title(title)
    ax.set_aspect("equal")
    save_figure(fig, out)


def cmd_reconstruct(a) -> int:
    from . import explore
    from .viz.grid import resolve_scale, save_image

    _check_out(a.out, (".png", ".npz"))
    m = _load(a.run)
    ds = _data_for(m, a.data)
    b = explore.load_real(m, ds, a.n, a.seed)
    if a.out.endswith(".npz"):
        _save_arrays(a.out, real=b.x.cpu().numpy(), reconstruction=explore.reconstructions(m, b.x).numpy(),
                     labels=None if b.y is None else b.y.numpy(), value_range=_range_note(m))
    else:
        if m.info.kind != "image":
            raise UserError("reconstruct draws images; for point data use --out FILE.npz")
        grid = explore.recon_grid(m, b.x)
        save_image(grid, a.out, upscale=resolve_scale(a.scale, grid))
    print(a.out)
    return 0


def cmd_interpolate(a) -> int:
    from . import explore

    _check_out(a.out, (".gif", ".mp4"))
    m = _load(a.run)
    if m.info.kind != "image":
        raise UserError("interpolate draws images; this model was trained on points")
    ds = _data_for(m, a.data)
    b = explore.load_real(m, ds, 2 * a.pairs, a.seed)
    if b.x.shape[0] < 2 * a.pairs:
        raise UserError(f"--pairs {a.pairs} needs {2 * a.pairs} images; the data has {b.x.shape[0]}")
    paths = write_interpolation(m, b.x, a.out, a.pairs, a.steps, a.scale)
    print("\n".join(map(str, paths)))
    return 0


def write_interpolation(m, x, out, pairs: int = 4, steps: int = 16, scale: int | None = None) -> list[Path]:
    """The interpolation movie (GIF or MP4, ping-pong) and its PNG strip, enlarged ``scale`` times
    (None: to a viewable width, ``viz.grid.viewable_scale``)."""
    from . import explore
    from .viz.grid import resolve_scale, save_gif, save_image

    out = Path(out)
    frames = explore.interpolation_frames(m, x, pairs, steps)
    k = resolve_scale(scale, frames[0])
    loop = frames + frames[-2:0:-1]  # ping-pong so the loop is smooth
    if out.suffix.lower() == ".mp4":
        from .viz.video import save_video

        movie = save_video(loop, out, fps=1000 / 90, upscale=k)
    else:
        movie = out.with_suffix(".gif")
        save_gif(loop, movie, duration_ms=90, upscale=k)
    strip = out.with_suffix(".png")
    save_image(explore.interpolation_strip(frames), strip, upscale=k)
    return [movie, strip]


def _need_encoder(m) -> None:
    """Refuse, before any progress line, a command that encodes images with a model that cannot."""
    if not getattr(m.method, "has_encoder", True):
        raise UserError(f"{m.method.name} has no encoder: it cannot encode or reconstruct images"
                        " (train vae_gan or a VAE for that)")


def cmd_encode(a) -> int:
    import numpy as np

    from . import explore

    if not a.out.endswith(".npz"):
        raise UserError(f"--out must end in .npz (codes are arrays), got {a.out!r}")
    m = _load(a.run)
    _need_encoder(m)
    ds = _data_for(m, a.data)
    _stage(f"encoding {a.n} items")
    b = explore.load_real(m, ds, a.n)
    codes = explore.encode(m, b.x)
    names = getattr(ds, "param_names", None)
    _save_arrays(a.out, codes=codes.numpy(), labels=None if b.y is None else b.y.numpy(),
                 params=None if b.params is None else b.params.numpy(),
                 param_names=None if b.params is None or not names else np.array(list(names)[:b.params.shape[1]]),
                 latent=np.array(m.latent.name))
    print(a.out)
    return 0


def cmd_latents(a) -> int:
    import numpy as np

    from . import explore

    _check_out(a.out, (".png", ".npz"))
    if a.thumbnails and (a.over_prior or not a.out.endswith(".png")):
        raise UserError("--thumbnails draws a .png map of the images; give --out FILE.png and leave out --over-prior")
    m = _load(a.run)
    if a.thumbnails and m.info.kind != "image":
        raise UserError("--thumbnails needs an image model; this one was trained on points")
    ds = _data_for(m, a.data)
    if not a.over_prior:
        _need_encoder(m)
    if not a.over_prior and not a.out.endswith(".npz"):
        try:
            explore.check_color_by(ds, a.color_by)
        except ValueError as e:
            raise UserError(str(e)) from None
    _stage(f"encoding {a.n} items and projecting them ({a.projection})")
    if a.thumbnails:
        from .viz.latent_map import thumbnail_map
        from .viz.grid import _atomic_save

        b = explore.load_real(m, ds, a.n)
        codes = explore.encode(m, b.x).numpy().astype(np.float64)
        try:
            xy = explore.project_2d(codes, a.projection)
        except ValueError as e:
            raise UserError(str(e)) from None
        pic, shown = thumbnail_map(xy, m.from_model(b.x))
        _atomic_save(lambda p: pic.save(p, format="PNG"), a.out)
        print(f"calae latents: {shown} of {len(xy)} images drawn (the others would overlap)", file=sys.stderr)
        print(a.out)
        return 0
    if a.over_prior:
        from .viz.latents import latent_scatter

        latent_scatter(m, ds, a.out, n=a.n)
    elif a.out.endswith(".npz"):
        b = explore.load_real(m, ds, a.n)
        codes = explore.encode(m, b.x).numpy()
        _save_arrays(a.out, xy=explore.project_2d(codes, a.projection), labels=None if b.y is None else b.y.numpy())
    else:
        try:
            explore.latent_map(m, ds, a.out, n=a.n, method=a.projection, color_by=a.color_by)
        except ValueError as e:
            raise UserError(str(e)) from None
    print(a.out)
    return 0


def cmd_project(a) -> int:
    import numpy as np
    import torch

    from .data.base import DataError
    from .data.folder import load_image, scan_images
    from .project import project, side_by_side
    from .viz.grid import resolve_scale, save_image

    _check_out(a.out, (".npz",))
    m = _load(a.run)
    if m.info.kind != "image":
        raise UserError("project works on image models; this one was trained on points")
    init = a.init if a.init != "auto" else ("encoder" if getattr(m.method, "has_encoder", True) else "mean")
    if init == "encoder" and not getattr(m.method, "has_encoder", True):
        raise UserError(f"{m.name} has no encoder: use --init mean")
    files = []
    for item in a.images:
        p = Path(item)
        if p.is_dir():
            files += scan_images(p)
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"{item}: no such image file or folder")
    if not files:
        raise UserError(f"no images found in {' '.join(a.images)} (jpg, png, webp, bmp)")
    files = files[:a.n]
    res, ch = m.info.resolution, m.info.channels
    try:
        x = torch.from_numpy(np.stack([load_image(f, res, ch, a.fit) for f in files]))
    except DataError as e:
        raise UserError(str(e)) from None
    _stage(f"projecting {len(files)} images ({a.steps} steps)")

    def report(step, mse):
        print(f"calae project: step {step}/{a.steps}, pixel MSE {mse:.5g}", file=sys.stderr, flush=True)

    r = project(m, m.to_model(x), steps=a.steps, lr=a.lr, init=init, report=report)
    _save_arrays(a.out, codes=r.codes, init_codes=r.init_codes, mse=r.mse, mse_init=r.mse_init,
                 files=np.array([str(f) for f in files]), init=np.array(init), latent=np.array(m.latent.name))
    grid = side_by_side(x, r.init_images, r.images)
    pic = Path(a.out).with_suffix(".png")
    save_image(grid, pic, upscale=resolve_scale(a.scale, grid))
    start = "the encoder's codes" if init == "encoder" else "the mean code"
    print(f"calae project: pixel MSE {float(r.mse_init.mean()):.5g} from {start} -> {float(r.mse.mean()):.5g} "
          f"after {a.steps} steps", file=sys.stderr)
    print(a.out)
    print(pic)
    return 0


def cmd_eval(a) -> int:
    import time

    from .metrics import default_metrics, evaluate
    from .metrics.suite import needs_encoder
    from .progress import stage

    m = _load(a.run)
    ds = _data_for(m, a.data)
    names = [s for s in (a.metrics or "").split(",") if s] or default_metrics(ds.info, m.method)
    if not getattr(m.method, "has_encoder", True):  # refused before any progress line
        enc = [s for s in names if needs_encoder(s)]
        if enc:
            raise UserError(f"{m.method.name} has no encoder: metric {enc[0]} needs one (drop it from --metrics)")
    t0 = [time.perf_counter()]

    def on_metric(name, i, count):
        if i:
            print(f"calae eval: {names[i - 1]} done in {time.perf_counter() - t0[0]:.0f} s", file=sys.stderr)
        t0[0] = time.perf_counter()
        stage(f"computing {name} ({i + 1} of {count})")

    res = evaluate(m.method, ds, names, n=a.n, seed=a.seed, on_metric=on_metric)
    if a.json:
        import math

        bad = [k for k, v in res.items() if isinstance(v, float) and not math.isfinite(v)]
        for k in bad:
            print(f"calae eval: warning: metric {k} is {res[k]}; written as null", file=sys.stderr)
        print(json.dumps({k: None if k in bad else v for k, v in res.items()}, allow_nan=False))
    else:
        w = max(len(k) for k in res) if res else 10
        for k, v in res.items():
            print(f"{k.ljust(w)}  {v:.6g}")
    return 0


def cmd_list(a) -> int:
    from .data.fractals import FAMILIES
    from .registry import DATASETS, METHODS, METRICS, PRESETS, PRIORS

    print("methods:  " + ", ".join(sorted(METHODS)))
    print("datasets: " + ", ".join(["fractals", *[f"fractals:{f}" for f in FAMILIES if f != "any"], "mnist:DIR",
                                    "digits", "toy:8gaussians", "toy:2spirals", "toy:checkerboard", "toy:rings",
                                    "video:PATH", "PATH (folder of images)"]))
    if PRIORS:
        print("priors:   " + ", ".join(sorted(PRIORS)))
    if METRICS:
        print("metrics:  " + ", ".join(sorted(METRICS)))
    names = sorted(PRESETS)
    if a.durations:
        unknown = [n for n in a.durations if n not in PRESETS]
        if unknown:
            raise UserError(f"--durations: no preset {', '.join(unknown)}; `calae list` names them")
    timed = (a.durations or names) if a.durations is not None else []
    print("presets:" + ("" if timed else " (budget; `calae list --durations` times each on this machine)"))
    for name in names:
        pr = PRESETS[name]
        budget = _preset_budget(pr)
        if name in timed:
            _stage(f"timing preset {name} ({timed.index(name) + 1}/{len(timed)})", announce=False)
            budget += ", " + _preset_duration(pr)
        print(f"  {name:<28} {pr['method']:<15} {pr['doc']} [{budget}]", flush=True)
    _ = DATASETS
    return 0


def _preset_budget(pr: dict) -> str:
    from .config import TrainConfig

    tr = pr["train"]
    if tr.get("epochs") is not None:
        return f"{tr['epochs']:g} epochs"
    return f"{tr.get('kimg', TrainConfig.kimg):g} kimg"


def _preset_duration(pr: dict) -> str:
    """'about 1 h 08 min here' from a few timed steps of the preset (``Trainer.estimate_seconds``),
    on fractal images of the preset's size when its data is not on this machine."""
    from .config import TrainConfig, from_dict
    from .training import Trainer
    from .training.runtime import format_duration

    tr = dict(pr["train"], method=pr["method"], sample_every_kimg=0.0, snapshot_every_kimg=0.0)
    data, note = str(tr.get("data", "fractals")), ""
    folder = Path(data.split(":", 1)[1] if data.startswith("mnist:") else data)
    local = data.startswith(("toy:", "digits", "fractals")) or (folder.is_dir() and any(folder.iterdir()))
    if not local:
        channels = 1 if data.startswith("mnist:") else (tr.get("channels") or 3)
        tr.update(data="fractals", channels=channels, resolution=tr.get("resolution") or (28 if channels == 1 else 64),
                  fit="crop")
        note = " (timed on fractals of its size)"
    tr["n_data"] = max(2 * int(tr.get("batch_size", TrainConfig.batch_size)), 64) if tr["data"].startswith("fractals") \
        else tr.get("n_data")
    try:
        trainer = Trainer(from_dict(TrainConfig, tr), dict(pr["model"]), None, progress=False, pictures=False,
                          calibrate=True, log=lambda s: None)
        trainer.setup_runtime()
        secs = trainer.estimate_seconds()
    except Exception as e:  # one preset that cannot be timed here does not hide the others
        return f"not timed: {str(e).splitlines()[0][:80]}"
    return f"about {format_duration(secs)} here{note}" if secs is not None else "not timed"


def cmd_fractals(a) -> int:
    from .data.fractals import FAMILIES, PREVIEW_NAME, export

    if a.family not in FAMILIES:
        raise UserError(f"--family must be one of {', '.join(FAMILIES)}; got {a.family!r}")
    if a.video or a.sweep:
        return _fractal_video(a)
    if not a.out:
        raise UserError("give --out FOLDER (PNGs), or --video OUT.mp4 with --sweep PARAM=A:B")
    _stage(f"rendering {a.n} fractals at {a.resolution} px")
    out = export(a.out, a.n, resolution=a.resolution, seed=a.seed, family=a.family, channels=a.channels,
                 supersample=a.supersample)
    print(f"wrote {a.n} images and params.jsonl to {out}; preview grid: {out / PREVIEW_NAME}")
    return 0


def _fractal_video(a) -> int:
    from .viz.video import VIDEO_OUT_EXTENSIONS, iter_fractal_sweep, parse_sweep, save_video

    if not a.video:
        raise UserError("--sweep makes a video: add --video OUT.mp4")
    if Path(a.video).is_dir() or not a.video.lower().endswith(VIDEO_OUT_EXTENSIONS):
        raise UserError(f"--video {a.video}: give a video file name ending in {' '.join(VIDEO_OUT_EXTENSIONS)}")
    if a.out:
        raise UserError("--video writes one video; leave out --out (that writes a folder of PNGs)")
    if not a.sweep:
        raise UserError("--video needs at least one --sweep PARAM=A:B, e.g. --sweep c_re=-0.8:-0.7")
    sweeps = [parse_sweep(s) for s in a.sweep]
    batches = iter_fractal_sweep(sweeps, a.frames, seed=a.seed, index=a.index, family=a.family,
                                 resolution=a.resolution, channels=a.channels, supersample=a.supersample, progress=True)
    out = save_video((f for x, _ in batches for f in x), a.video, fps=a.fps)  # rendered and encoded batch by batch
    how = {"seed": a.seed, "family": a.family, "index": a.index, "frames": a.frames, "fps": a.fps,
           "resolution": a.resolution, "channels": a.channels, "supersample": a.supersample,
           "sweep": [{"param": n, "from": lo, "to": hi} for n, lo, hi in sweeps]}
    Path(out).with_suffix(".json").write_text(json.dumps(how, indent=1) + "\n")
    print(f"wrote {a.frames} frames to {out} (and {Path(out).with_suffix('.json').name})")
    return 0


def cmd_demo(a) -> int:
    """Train the demo model on fractals for a time budget on this machine and write every picture
    the README shows. What it does and how long it will take are printed before the progress bar."""
    import time

    from . import explore
    from .config import TrainConfig, from_dict, preset
    from .data import open_dataset
    from .api import load
    from .training import Trainer
    from .training.runtime import format_duration
    from .viz.grid import resolve_scale, save_image

    out = Path(a.out)
    name = "vae-demo"
    pr = preset(name)
    tr = dict(pr["train"], method=pr["method"], sample_every_kimg=2.0, snapshot_every_kimg=5.0,
              precision=a.precision, threads=a.threads)
    cfg = from_dict(TrainConfig, tr)
    print(f"demo: trains {pr['method']} (preset {name}: {pr['doc']}) on {cfg.n_data or 'the'} {cfg.resolution} px "
          f"fractal images, then writes samples, reconstructions, an interpolation GIF and a latent map to {out}/",
          file=sys.stderr, flush=True)
    trainer = Trainer(cfg, dict(pr["model"]), out / "run", calibrate=True)
    rt = trainer.setup_runtime()
    if a.kimg or rt is None or not rt.img_per_s:  # under torchrun nothing is measured: the preset's budget
        kimg, why = (a.kimg, "--kimg") if a.kimg else (cfg.kimg, f"preset {name}")
    else:
        kimg = max(trainer.images_per_step / 1000.0, round(a.seconds * rt.img_per_s / 1000.0, 1))
        why = f"{a.seconds:.0f} s at {rt.img_per_s:.1f} img/s"
        for _ in range(3):  # the estimate counts data loading too: shrink the budget to the time asked
            trainer.set_budget(kimg)
            est = trainer.estimate_seconds()
            if est is None or est <= a.seconds * 1.05:
                break
            kimg = max(trainer.images_per_step / 1000.0, round(kimg * a.seconds / est, 1))
    trainer.set_budget(kimg)
    est = trainer.estimate_seconds()
    print(f"demo: budget {kimg:g} kimg ({why}); estimated {format_duration(est or 0)} of training, "
          "then a few seconds of pictures", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    _stage("training", announce=False)
    trainer.run()
    t_train = time.perf_counter() - t0
    m = load(out / "run")
    ds = open_dataset(tr["data"], resolution=m.info.resolution, channels=m.info.channels, n=tr.get("n_data"))
    _stage("writing pictures")
    grid = explore.sample_grid(m, 64, seed=1)
    save_image(grid, out / "samples.png", upscale=resolve_scale(a.scale, grid))
    real = explore.load_real(m, ds, 16, seed=3)
    grid = explore.recon_grid(m, real.x)
    save_image(grid, out / "reconstructions.png", upscale=resolve_scale(a.scale, grid))
    write_interpolation(m, explore.load_real(m, ds, 8, seed=5).x, out / "interpolation.gif", scale=a.scale)
    explore.latent_map(m, ds, out / "latents.png", n=600)
    print(f"\npictures in {out}/: samples.png reconstructions.png interpolation.gif interpolation.png latents.png")
    print(f"run folder (losses.png, progress.gif, stats.jsonl, snapshot): {out / 'run'}")
    print(f"training took {format_duration(t_train)} (estimated {format_duration(est or 0)}), pictures "
          f"{format_duration(time.perf_counter() - t0 - t_train)}")
    return 0


def cmd_explore(a) -> int:
    from .web.server import Explorer, missing_web_extra, serve

    msg = missing_web_extra()
    if msg:
        raise UserError(msg)
    m = _load(a.run)
    ds = None if a.data == "none" else (_data_for(m, a.data) if a.data or m.meta.get("train", {}).get("data") else None)
    if not 0 <= a.port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {a.port}")
    print(f"encoding {a.n if ds is not None else 0} items for the map ...", file=sys.stderr, flush=True)
    _stage("encoding items for the map", announce=False)
    ex = Explorer(m, ds, n=a.n, seed=a.seed)
    from .progress import quiet

    quiet()  # serving: waiting for the browser is not work
    try:
        serve(ex, host=a.host, port=a.port)
    except OSError as e:  # the port is taken, or the address is not this machine's
        raise UserError(str(e)) from None
    return 0


def cmd_bend(a) -> int:
    import torch

    from . import bending
    from .viz.grid import make_grid, resolve_scale, save_gif, save_image

    m = _load(a.run)
    if a.list_layers:
        found = bending.layers(m)
        if not found:
            raise UserError(f"this {m.name} model's decoder has no convolutional layers to bend")
        for name, shape in found.items():
            print(f"{name:<16} {' x '.join(map(str, shape))}")
        return 0
    bends = bending.load_bends(a.config) if a.config else []
    layer = None
    for kind, val in a.steps:
        if kind == "layer":
            layer = val
        elif kind == "transform":
            if layer is None:
                raise UserError(f"--transform {val} needs a --layer before it (see calae bend RUN --list-layers)")
            bends.append(bending.Bend(layer, val, n_clusters=a.clusters))
        else:
            if not bends:
                raise UserError("--channels belongs to the --transform before it; give a --transform first")
            last = bends[-1]
            bends[-1] = bending.Bend(last.layer, last.transform, val, last.seed, last.n_clusters)
    if not bends:
        raise UserError("no bend given: pass --layer L --transform NAME[:PARAMS] (or --config FILE)")
    if not a.out:
        raise UserError("--out is required (a .png, or a .gif with --animate)")
    opts = m.display_options()
    codes = m.sample_latents(a.n, a.seed)
    nrow = min(a.n, 8)

    plain = m.decode(codes, **opts) if a.compare else None  # the unbent row, decoded once for every frame

    def picture(bs):
        with m.bend(*bs):
            bent = m.decode(codes, **opts)
        return make_grid(torch.cat([plain, bent]) if a.compare else bent, nrow=nrow)

    if a.animate:
        if not a.out.endswith((".gif", ".mp4")):
            raise UserError(f"--animate writes a GIF or an MP4: --out must end in .gif or .mp4, got {a.out!r}")
        param, _, rng = a.animate.partition("=")
        try:
            lo, hi = (float(v) for v in rng.split(":"))
        except ValueError:
            raise UserError(f"--animate takes PARAM=A:B, as angle=0:360; got {a.animate!r}") from None
        idx = [i for i, b in enumerate(bends) if param in bending.TRANSFORMS[b.name].params]
        if not idx:
            raise UserError(f"no transform given has a parameter {param!r}")
        frames = []
        for t in torch.linspace(lo, hi, a.frames).tolist():
            bs = list(bends)
            bs[idx[-1]] = bends[idx[-1]].with_param(param, round(t, 6))
            frames.append(picture(bs))
        if a.out.endswith(".mp4"):
            from .viz.video import save_video

            save_video(frames, a.out, fps=12.5, upscale=resolve_scale(a.scale, frames[0]))
        else:
            save_gif(frames, a.out, duration_ms=80, upscale=resolve_scale(a.scale, frames[0]))
    else:
        grid = picture(bends)
        save_image(grid, a.out, upscale=resolve_scale(a.scale, grid))
    print(a.out)
    return 0


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "reconstruct": cmd_reconstruct,
            "interpolate": cmd_interpolate, "encode": cmd_encode, "latents": cmd_latents, "eval": cmd_eval,
            "list": cmd_list, "project": cmd_project, "fractals": cmd_fractals, "demo": cmd_demo, "explore": cmd_explore,
            "bend": cmd_bend}


def _user_errors() -> tuple[type, ...]:
    from .api import APIError
    from .bending import BendError
    from .config import ConfigError
    from .data.base import DataError
    from .metrics import MetricError
    from .training.checkpoint import CheckpointError

    return (UserError, APIError, BendError, ConfigError, DataError, CheckpointError, MetricError, FileNotFoundError,
            PermissionError)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings as 'calae: warning: MESSAGE' (no file name, line number or source line)."""
    return f"calae: warning: {str(message).strip()}\n"


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.formatwarning = _one_line_warning
    parser = build_parser()
    a = parser.parse_args(argv)
    from .training.loop import TrainingDiverged

    from .progress import Heartbeat

    try:
        with Heartbeat(f"calae {a.cmd}"):
            return COMMANDS[a.cmd](a)
    except _user_errors() as e:
        msg = str(e) if not isinstance(e, OSError) or not e.filename else f"{e.filename}: {e.strerror}"
        print(f"calae {a.cmd}: error: {msg}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"calae {a.cmd}: error: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"calae {a.cmd}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
