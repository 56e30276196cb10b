"""Methods: one file each, registered in calae.registry.METHODS by their short names."""
import importlib
import importlib.util

from .base import Method, OptimizerSpec, Phase, StepContext  # noqa: F401

# Each module registers its method(s) on import.
for _mod in ("vae", "aae", "alae", "soft_intro_vae", "calae", "vae_gan"):
    if importlib.util.find_spec(f"{__name__}.{_mod}") is not None:
        importlib.import_module(f"{__name__}.{_mod}")
