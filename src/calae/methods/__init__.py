"""Methods: one file each, registered in calae.registry.METHODS by their short names."""
from .base import Method, OptimizerSpec, Phase, StepContext  # noqa: F401
from . import vae  # noqa: F401  (registers "vae")
