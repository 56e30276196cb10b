"""calae: adversarial latent autoencoders (CALAE, ALAE, AAE, Soft-IntroVAE, VAE) and procedural fractal data."""
__version__ = "0.1.0"
