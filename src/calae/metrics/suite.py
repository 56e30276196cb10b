"""The registered metrics: ``METRICS[name](model, dataset, n=None, seed=0, batch_size=256,
device=None, **options) -> {"name/key": float}``, and :func:`evaluate`, which runs several of them.

A metric uses only the inference surface every method exposes: ``model.info``,
``model.value_range``, ``model.sample(n, seed)``, ``model.encode(x)``, ``model.reconstruct(x)``,
and, for ``toy_elbo``, ``model.elbo(x)``. Real items come from ``dataset.get`` (a seeded subset).
Every metric runs with the model (and any feature network) in eval mode under ``torch.no_grad``,
restoring each submodule's own mode afterwards. Results are deterministic given ``seed`` (and
``batch_size``, which sets the sampling chunks).

Protocol choices that a number depends on:
- Generated images are quantised to uint8 (as saved PNGs) before SWD and feature extraction; real
  and generated sets have the same size n (capped by the dataset size).
- Feature networks are fixed across evaluation seeds: the classifier is trained with ``clf_seed``
  (default 0), the random conv net uses ``randconv_seed`` (default 0).
- ``n`` defaults: 2,048 for image metrics (shared, so one sample draw serves SWD, FD and PR),
  10,000 for fid_inception, 5,000 for toy_hist and 12,800 for toy_elbo (the official counts).
"""
from __future__ import annotations

import functools
import hashlib
import math
import os
import weakref
from dataclasses import dataclass, field

import torch

from ..data.base import DataInfo, Dataset, to_model_range
from ..registry import METRICS, register
from ..api import inference as eval_mode
from .base import (MetricError, encode_all, gather, model_device, real_indices, reconstruct_all,
                   sample_model, to_uint8_images, to_unit)
from .features import ClassifierFeatures, RandConvFeatures
from .frechet import frechet_distance
from .prdc import precision_recall
from .probe import knn_accuracy, linear_probe, nn1_accuracy, split_indices, svm_accuracy
from .recon import mse, psnr, ssim
from .swd import swd
from .toy import grid_normalized_elbo, hist_kl_jsd, toy_range

INCEPTION_ENV = "CALAE_INCEPTION_WEIGHTS"

# Options a metric may take (evaluate() passes all of them to every metric; unknown ones are errors).
OPTIONS = {
    "clf_seed": "seed of the feature classifier (fd_/pr_classifier), default 0",
    "clf_steps": "training steps of the feature classifier, default 400",
    "randconv_seed": "seed of the random conv feature net (fd_/pr_randconv), default 0",
    "inception_weights": f"Inception-v3 weights file for fid_inception (or ${INCEPTION_ENV})",
    "inception_variant": "auto | fid | torchvision",
    "swd_normalize": "separate (PGGAN) | combined",
    "k": "neighbourhood size of precision/recall, default 3",
    "toy_range": "half-width r of the toy square [-r, r]^2 (default: the official one per toy set)",
    "grid_pts": "grid points per axis of toy_elbo, default 1024",
    "probe_test": "test set of probe_svm / probe_1nn_split: a Dataset or a data spec (mnist:DIR opens DIR's "
                  "t10k files); default: a seeded quarter of the n items, disjoint from the training codes",
}


@dataclass
class Context:
    """What one metric call knows; ``cache`` is shared by the metrics of one evaluate() call."""

    model: torch.nn.Module
    dataset: Dataset
    n: int
    seed: int
    batch_size: int
    device: torch.device
    opts: dict
    cache: dict = field(default_factory=dict)

    @property
    def info(self) -> DataInfo:
        return self.dataset.info

    @property
    def value_range(self) -> str:
        return getattr(self.model, "value_range", "tanh")

    @property
    def n_real(self) -> int:
        return min(int(self.n), len(self.dataset))

    def _cached(self, key, make):
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]

    def real(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(x as stored, labels) of the seeded real subset of size n_real."""
        return self._cached(("real", self.n_real, self.seed), lambda: gather(
            self.dataset, real_indices(len(self.dataset), self.n_real, self.seed), self.batch_size))

    def fake(self) -> torch.Tensor:
        """n_real samples in the model range (float, CPU)."""
        return self._cached(("fake", self.n_real, self.seed, self.batch_size), lambda: sample_model(
            self.model, self.n_real, self.seed, self.batch_size, self.device))

    def fake_uint8(self) -> torch.Tensor:
        return self._cached(("fake_u8", self.n_real, self.seed, self.batch_size),
                            lambda: to_uint8_images(self.fake(), self.value_range))

    def reconstructions(self) -> torch.Tensor:
        return self._cached(("rec", self.n_real, self.seed, self.batch_size), lambda: reconstruct_all(
            self.model, self.real()[0], self.value_range, self.batch_size, self.device))

    def codes(self) -> torch.Tensor:
        return self._cached(("codes", self.n_real, self.seed, self.batch_size), lambda: encode_all(
            self.model, self.real()[0], self.value_range, self.batch_size, self.device))

    def labels(self) -> torch.Tensor:
        y = self.real()[1]
        if y is None:
            raise MetricError(f"{self.info.name or 'this dataset'} declares {self.info.num_classes} classes "
                              "but its batches carry no labels")
        return y

    # Feature spaces ----------------------------------------------------------------------------

    def extractor(self, kind: str):
        if kind == "classifier":
            return _classifier(self)
        if kind == "randconv":
            seed = int(self.opts.get("randconv_seed", 0))
            return self._cached(("randconv", seed), lambda: RandConvFeatures(self.info.channels, seed=seed))
        if kind == "inception":
            return _inception(self)
        raise ValueError(kind)  # pragma: no cover

    def features(self, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(real features, fake features) in the named feature space."""
        ex = self.extractor(kind)
        tag = (kind, getattr(ex, "seed", None), getattr(ex, "path", None))
        real = self._cached(("feat_real", tag, self.n_real, self.seed), lambda: ex.extract(
            self.real()[0], self.batch_size, self.device))
        fake = self._cached(("feat_fake", tag, self.n_real, self.seed, self.batch_size), lambda: ex.extract(
            self.fake_uint8(), self.batch_size, self.device))
        return real, fake


# Trained/loaded feature networks are kept across evaluate() calls (periodic evaluation during
# training would otherwise retrain the classifier every time), keyed by the dataset's identity.
_NETS: dict = {}


def _remember(key, ds, make):
    hit = _NETS.get(key)
    if hit is not None and (hit[0] is None or hit[0]() is ds):
        return hit[1]
    net = make()
    if len(_NETS) >= 4:
        _NETS.pop(next(iter(_NETS)))
    _NETS[key] = (None if ds is None else weakref.ref(ds), net)
    return net


def _classifier(ctx: Context) -> ClassifierFeatures:
    seed, steps = int(ctx.opts.get("clf_seed", 0)), int(ctx.opts.get("clf_steps", 400))
    ds = ctx.dataset

    def make():
        idx = real_indices(len(ds), 20_000, seed)
        x, y = gather(ds, idx, 1024)
        if y is None:
            raise MetricError("the feature classifier needs labels; this dataset's batches carry none")
        # The fit is a pure function of these images, labels, seed and steps: share it between dataset
        # objects holding the same data (a benchmark opens the data once per model; the fit is ~40 s).
        digest = hashlib.sha1(x.contiguous().numpy().tobytes() + y.contiguous().numpy().tobytes()).hexdigest()
        return _remember(("classifier_data", digest, ctx.info.num_classes, seed, steps, str(ctx.device)), None,
                         lambda: ClassifierFeatures.fit(x, y, ctx.info.num_classes, steps=steps, seed=seed,
                                                        device=ctx.device))

    net = _remember(("classifier", id(ds), len(ds), ctx.info, seed, steps), ds, make)
    net.seed = seed
    return net


def _inception(ctx: Context):
    from .inception import InceptionFeatures

    path = ctx.opts.get("inception_weights") or os.environ.get(INCEPTION_ENV)
    if not path:
        raise MetricError(f"fid_inception needs local Inception-v3 weights: pass inception_weights=PATH or set "
                          f"{INCEPTION_ENV} (nothing is downloaded)")
    variant = ctx.opts.get("inception_variant", "auto")
    path = os.path.abspath(os.path.expanduser(str(path)))
    stamp = os.path.getmtime(path) if os.path.exists(path) else None
    return _remember(("inception", path, stamp, variant), None, lambda: InceptionFeatures(path, variant))


# ------------------------------------------------------------------------------------------------
# Registration


def _check_model(model, info: DataInfo, name: str) -> None:
    minfo = getattr(model, "info", None)
    if isinstance(minfo, DataInfo) and minfo.shape != info.shape:
        shape = lambda s: "x".join(map(str, s))  # noqa: E731
        raise MetricError(f"{name}: the model was built for {shape(minfo.shape)} data but the dataset "
                          f"gives {shape(info.shape)}")


def metric(name: str, *, kinds: tuple[str, ...], labels: bool = False, default_n: int = 2048):
    """Register fn(ctx) -> {key: value} as METRICS[name] with the uniform signature."""

    def deco(fn):
        @functools.wraps(fn)
        def run(model, dataset, n: int | None = None, seed: int = 0, batch_size: int = 256, device=None,
                cache: dict | None = None, **opts) -> dict[str, float]:
            info = dataset.info
            unknown = sorted(set(opts) - set(OPTIONS))
            if unknown:
                raise MetricError(f"unknown metric option {unknown[0]!r}; known: {', '.join(sorted(OPTIONS))}")
            if info.kind not in kinds:
                raise MetricError(f"{name} applies to {' or '.join(kinds)} data, not to {info.kind} data")
            if labels and not info.num_classes:
                raise MetricError(f"{name} needs labelled data; {info.name or 'this dataset'} has no labels")
            _check_model(model, info, name)
            n = default_n if n is None else int(n)
            if n < 2:
                raise MetricError(f"{name}: n must be at least 2, got {n}")
            ctx = Context(model, dataset, n, int(seed), int(batch_size), model_device(model, device), opts,
                          {} if cache is None else cache)
            with eval_mode(model), torch.no_grad():
                out = fn(ctx)
            return {f"{name}/{k}": float(v) for k, v in out.items()}

        run.metric_name, run.kinds, run.needs_labels, run.default_n = name, kinds, labels, default_n
        register(METRICS, name)(run)
        return run

    return deco


@metric("swd_gen", kinds=("image",))
def swd_gen(ctx: Context) -> dict[str, float]:
    """SWDx1e3 (PGGAN) between n real images and n samples, per pyramid level and "avg"."""
    return swd(ctx.real()[0], ctx.fake_uint8(), seed=ctx.seed,
               normalize=ctx.opts.get("swd_normalize", "separate"), batch_size=ctx.batch_size)


@metric("swd_rec", kinds=("image",))
def swd_rec(ctx: Context) -> dict[str, float]:
    """SWDx1e3 between n real images and their reconstructions."""
    return swd(ctx.real()[0], to_uint8_images(ctx.reconstructions(), ctx.value_range), seed=ctx.seed,
               normalize=ctx.opts.get("swd_normalize", "separate"), batch_size=ctx.batch_size)


def _fd(ctx: Context, kind: str, key: str = "fd") -> dict[str, float]:
    real, fake = ctx.features(kind)
    return {key: frechet_distance(real, fake), "n": real.shape[0]}


def _pr(ctx: Context, kind: str) -> dict[str, float]:
    real, fake = ctx.features(kind)
    k = int(ctx.opts.get("k", 3))
    if real.shape[0] <= k:
        raise MetricError(f"precision/recall with k={k} needs more than {k} items, got {real.shape[0]}")
    return precision_recall(real, fake, k=k)


@metric("fd_classifier", kinds=("image",), labels=True)
def fd_classifier(ctx: Context) -> dict[str, float]:
    """Fréchet distance in the penultimate layer of a classifier trained on the labelled data;
    "clf_acc" is that classifier's held-out accuracy (the features mean little if it is low)."""
    out = _fd(ctx, "classifier")
    out["clf_acc"] = ctx.extractor("classifier").heldout_accuracy
    return out


@metric("pr_classifier", kinds=("image",), labels=True)
def pr_classifier(ctx: Context) -> dict[str, float]:
    """Precision/recall (k=3) in the classifier's feature space."""
    return _pr(ctx, "classifier")


@metric("fd_randconv", kinds=("image",))
def fd_randconv(ctx: Context) -> dict[str, float]:
    """Fréchet distance in a fixed random conv net's feature space (any images, no labels)."""
    return _fd(ctx, "randconv")


@metric("pr_randconv", kinds=("image",))
def pr_randconv(ctx: Context) -> dict[str, float]:
    """Precision/recall (k=3) in the random conv net's feature space."""
    return _pr(ctx, "randconv")


@metric("fid_inception", kinds=("image",), default_n=10_000)
def fid_inception(ctx: Context) -> dict[str, float]:
    """FID with Inception-v3 pool3 features from a local weights file; "fid_variant" is 1 for the
    TF-FID network (comparable with published FIDs) and 0 for torchvision's weights."""
    out = _fd(ctx, "inception", key="fid")
    out["fid_variant"] = 1.0 if ctx.extractor("inception").variant == "fid" else 0.0
    return out


@metric("probe_linear", kinds=("image", "points"), labels=True)
def probe_linear(ctx: Context) -> dict[str, float]:
    """Held-out accuracy of a logistic-regression probe on the codes E(x) (25 % held out)."""
    return {"acc": linear_probe(ctx.codes(), ctx.labels(), seed=ctx.seed)}


@metric("probe_1nn", kinds=("image", "points"), labels=True)
def probe_1nn(ctx: Context) -> dict[str, float]:
    """Held-out 1-nearest-neighbour accuracy on the codes E(x) (25 % held out)."""
    return {"acc": knn_accuracy(ctx.codes(), ctx.labels(), k=1, seed=ctx.seed)}


def _test_set(ctx: Context) -> Dataset | None:
    test = ctx.opts.get("probe_test")
    if test is None:
        return None
    if isinstance(test, (str, os.PathLike)):
        from ..data import open_dataset, parse_spec

        kind, _ = parse_spec(str(test))
        extra = {"split": "test"} if kind == "mnist" else {}
        res = None if ctx.info.kind != "image" else ctx.info.resolution
        ch = None if ctx.info.kind != "image" else ctx.info.channels
        test = open_dataset(str(test), resolution=res, channels=ch, **extra)
    if test.info.shape != ctx.info.shape:
        shape = lambda s: "x".join(map(str, s))  # noqa: E731
        raise MetricError(f"probe_test gives {shape(test.info.shape)} items; the dataset has {shape(ctx.info.shape)}")
    return test


def official_probe_codes(ctx: Context) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train codes, train labels, test codes, test labels) of ALAE's protocol: n seeded training
    items of the dataset against up to n seeded items of the separate test set (option
    ``probe_test``); without one, a seeded 25 % of the n items is held out (disjoint, but drawn
    from the same sample)."""
    def make():
        test = _test_set(ctx)
        if test is None:
            codes, y = ctx.codes(), ctx.labels()
            tr, te = split_indices(codes.shape[0], 0.25, ctx.seed)
            return codes[tr], y[tr], codes[te], y[te]
        x_te, y_te = gather(test, real_indices(len(test), ctx.n_real, ctx.seed + 1), ctx.batch_size)
        if y_te is None:
            raise MetricError("probe_test's batches carry no labels")
        c_te = encode_all(ctx.model, x_te, ctx.value_range, ctx.batch_size, ctx.device)
        return ctx.codes(), ctx.labels(), c_te, y_te

    key = ("official_probe", ctx.n_real, ctx.seed, ctx.batch_size, id(ctx.opts.get("probe_test")),
           str(ctx.opts.get("probe_test")))
    return ctx._cached(key, make)


@metric("probe_svm", kinds=("image", "points"), labels=True, default_n=10_000)
def probe_svm(ctx: Context) -> dict[str, float]:
    """ALAE's MNIST protocol: a linear SVM (LinearSVC, C = 0.02, raw codes) fitted on the codes E(x)
    of n training items, accuracy on the codes of a separate test set (option probe_test)."""
    xtr, ytr, xte, yte = official_probe_codes(ctx)
    return {"acc": svm_accuracy(xtr, ytr, xte, yte), "n_train": xtr.shape[0], "n_test": xte.shape[0]}


@metric("probe_1nn_split", kinds=("image", "points"), labels=True, default_n=10_000)
def probe_1nn_split(ctx: Context) -> dict[str, float]:
    """ALAE's MNIST protocol: 1-NN (Euclidean) of the test set's codes among the codes of n training
    items, accuracy on the separate test set (option probe_test)."""
    xtr, ytr, xte, yte = official_probe_codes(ctx)
    return {"acc": nn1_accuracy(xtr, ytr, xte, yte), "n_train": xtr.shape[0], "n_test": xte.shape[0]}


@metric("recon", kinds=("image", "points"))
def recon(ctx: Context) -> dict[str, float]:
    """Images: MSE, PSNR (dB) and SSIM on [0, 1] pixels (reconstructions clamped to [0, 1]).
    Points: MSE in data coordinates."""
    x, rec = ctx.real()[0], ctx.reconstructions()
    if ctx.info.kind == "points":
        return {"mse": mse(to_model_range(x, ctx.value_range), rec)}
    a, b = to_unit(x, ctx.value_range), to_unit(rec, ctx.value_range)
    return {"mse": mse(a, b), "psnr": psnr(a, b, 1.0), "ssim": ssim(a, b, 1.0)}


def _toy_square(ctx: Context, real: torch.Tensor) -> float:
    if ctx.info.dim != 2:
        raise MetricError(f"toy metrics need 2-D points, got {ctx.info.dim}-D")
    if "toy_range" in ctx.opts:
        return float(ctx.opts["toy_range"])
    r = toy_range(ctx.info.name)
    if r is None:  # not one of the official sets: the smallest integer square holding the data
        r = float(max(1, math.ceil(float(real.abs().max()))))
    return r


@metric("toy_hist", kinds=("points",), default_n=5000)
def toy_hist(ctx: Context) -> dict[str, float]:
    """Soft-IntroVAE's KL(real||fake) and "JSD" between 100x100 histogram densities of n real and
    n generated points, plus the textbook JSD (jsd_std) and the half-width r of the square used."""
    real = ctx.real()[0].float()
    r = _toy_square(ctx, real)
    out = hist_kl_jsd(real, ctx.fake(), xy_range=(-r, r))
    out["range"] = r
    return out


@metric("toy_elbo", kinds=("points",), default_n=12_800)
def toy_elbo(ctx: Context) -> dict[str, float]:
    """Soft-IntroVAE's grid-normalised ELBO (lower is better); needs model.elbo(x) -> [N] ELBO,
    -(||x - G(mu)||^2 + KL) per point, called with beta_rec = beta_kl = 1."""
    elbo = getattr(ctx.model, "elbo", None)
    if not callable(elbo):
        raise MetricError(f"toy_elbo needs model.elbo(x) -> [N] per-point ELBO; {type(ctx.model).__name__} has none")
    real = ctx.real()[0].float()
    r = _toy_square(ctx, real)
    # The official evaluation uses unit weights (beta_rec = beta_kl = 1) whatever the training betas:
    # the contract of elbo(x, beta_rec, beta_kl) (VAEBase.elbo).
    fn = lambda p: elbo(p.to(ctx.device), beta_rec=1.0, beta_kl=1.0)  # noqa: E731
    return {"gnelbo": grid_normalized_elbo(fn, real, r, n_pts=int(ctx.opts.get("grid_pts", 1024)),
                                           batch_size=max(ctx.batch_size, 4096))}


# ------------------------------------------------------------------------------------------------
# Defaults and the runner


def _have_sklearn() -> bool:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return False
    return True


def default_metrics(info: DataInfo, model=None) -> list[str]:
    """Sensible metrics for a data kind (and a model, when given: toy_elbo needs model.elbo)."""
    if info.kind == "points":
        names = ["toy_hist"] if info.dim == 2 else []
        if info.dim == 2 and (model is None or callable(getattr(model, "elbo", None))):
            names.append("toy_elbo")
        names.append("recon")
        if info.num_classes:
            names += ["probe_1nn"] + (["probe_linear"] if _have_sklearn() else [])
        return names
    names = ["swd_gen", "swd_rec", "recon"]
    if info.num_classes:
        names += ["fd_classifier", "pr_classifier", "probe_1nn"] + (["probe_linear"] if _have_sklearn() else [])
    else:
        names += ["fd_randconv", "pr_randconv"]
    if os.environ.get(INCEPTION_ENV):
        names.append("fid_inception")
    if model is not None and not getattr(model, "has_encoder", True):  # a GAN: samples only
        names = [m for m in names if not needs_encoder(m)]
    return names


def needs_encoder(name: str) -> bool:
    """Whether metric ``name`` encodes or reconstructs images (so a GAN cannot run it)."""
    return name in ("swd_rec", "recon", "disentangle") or name.startswith("probe_")


def evaluate(model, dataset: Dataset, names: list[str] | tuple[str, ...] | None = None, n: int | None = None,
             seed: int = 0, batch_size: int = 256, device=None, on_metric=None, **opts) -> dict[str, float]:
    """Run the named metrics (default: :func:`default_metrics`) and merge their results.
    ``on_metric(name, i, count)`` is called before each (the CLI's progress lines).

    The model is in eval mode for the whole call (each submodule's mode is restored afterwards),
    everything runs under torch.no_grad (the feature classifier re-enables grads for its own
    training), and the metrics share one cache so that they see the same real subset, samples,
    codes and features. ``n=None`` lets each metric use its own default count.
    """
    names = list(default_metrics(dataset.info, model) if names is None else names)
    for name in names:
        if name not in METRICS:
            raise MetricError(f"unknown metric {name!r}; choose from {', '.join(sorted(METRICS))}")
    cache: dict = {}
    out: dict[str, float] = {}
    with eval_mode(model), torch.no_grad():
        for i, name in enumerate(names):
            if on_metric is not None:
                on_metric(name, i, len(names))
            out.update(METRICS[name](model, dataset, n=n, seed=seed, batch_size=batch_size, device=device,
                                     cache=cache, **opts))
    return out
