"""Methods: one file each, registered in calae.registry.METHODS by their short names."""
from . import aae, alae, calae, soft_intro_vae, vae  # noqa: F401  (each registers its method(s) on import)
from . import vae_gan  # noqa: F401  (registers vae_gan and gan)
from .base import Method, OptimizerSpec, Phase, StepContext  # noqa: F401
