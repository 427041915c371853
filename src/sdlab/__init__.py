"""sdlab: generate, understand, steer and personalize latent diffusion models."""

__version__ = "0.1.0"
