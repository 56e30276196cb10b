"""Pictures: grids, interpolation GIFs, latent maps, loss curves."""
from .grid import make_grid, save_image, save_gif  # noqa: F401
