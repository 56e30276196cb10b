"""Evaluation metrics that work offline.

Low-level functions (pure, on tensors, deterministic given a seed):
  swd.swd                         sliced Wasserstein distance on Laplacian-pyramid patches (PGGAN)
  frechet.frechet_distance        Fréchet distance between Gaussian fits of two feature sets
  features / inception            feature extractors: trained classifier, random conv, Inception-v3
  prdc.precision_recall           k-NN manifold precision and recall (Kynkäänniemi et al. 2019)
  probe.linear_probe / knn_accuracy   latent-code quality on labelled data (one sample, 75/25)
  probe.svm_accuracy / nn1_accuracy   ALAE's protocol: linear SVM / 1-NN, train codes vs test codes
  recon.mse / psnr / ssim         reconstruction quality
  toy.hist_kl_jsd / grid_normalized_elbo   2-D toy protocol of Soft-IntroVAE

Registered metrics (``calae.registry.METRICS``, defined in :mod:`calae.metrics.suite`), each
``fn(model, dataset, n=None, seed=0, batch_size=256, device=None, **options) -> {"name/key": float}``:
  swd_gen, swd_rec, fd_classifier, pr_classifier, fd_randconv, pr_randconv, fid_inception,
  probe_linear, probe_1nn, probe_svm, probe_1nn_split, recon, toy_hist, toy_elbo
and :func:`evaluate` / :func:`default_metrics` to run several.
"""
from __future__ import annotations

from ..api import inference as eval_mode
from .base import MetricError
from .features import ClassifierFeatures, RandConvFeatures
from .frechet import frechet_distance, frechet_distance_from_stats, gaussian_stats
from .inception import InceptionFeatures, InceptionV3
from .prdc import precision_recall
from .probe import knn_accuracy, linear_probe, nn1_accuracy, svm_accuracy
from .recon import mse, psnr, ssim
from .suite import INCEPTION_ENV, OPTIONS, default_metrics, evaluate
from . import spectrum  # noqa: F401,E402  (registers hf_power: high-frequency power of samples vs data)
# The function swd is not re-exported here: it would shadow the submodule (``import
# calae.metrics.swd as m`` would give the function). Use ``from calae.metrics.swd import swd``.
from .swd import laplacian_pyramid, sliced_wasserstein
from .toy import TOY_RANGES, grid_normalized_elbo, hist_kl_jsd, toy_range

__all__ = [
    "MetricError", "eval_mode", "evaluate", "default_metrics", "OPTIONS", "INCEPTION_ENV",
    "sliced_wasserstein", "laplacian_pyramid",
    "frechet_distance", "frechet_distance_from_stats", "gaussian_stats",
    "ClassifierFeatures", "RandConvFeatures", "InceptionFeatures", "InceptionV3",
    "precision_recall", "linear_probe", "knn_accuracy", "svm_accuracy", "nn1_accuracy", "mse", "psnr", "ssim",
    "hist_kl_jsd", "grid_normalized_elbo", "toy_range", "TOY_RANGES",
]
from . import disentangle  # noqa: F401,E402  (registers disentangle: DCI and MIG of codes against known factors)
