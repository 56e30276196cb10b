"""Shared architectures: residual conv encoder/decoder, MLPs (and later equalized-lr and style nets)."""
from .conv import ConvDecoder, ConvEncoder, ResBlock, plan_levels  # noqa: F401
from .mlp import MLP  # noqa: F401
from .discriminator import ImageDiscriminator  # noqa: F401
