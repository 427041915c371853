"""sdlab: generate, understand, steer and personalize latent diffusion models."""

__version__ = "0.1.0"

__all__ = ["GenerationConfig", "GenerationResult", "Pipeline", "__version__"]


def __getattr__(name: str):
    """`sdlab.Pipeline` and friends, imported on first use (PEP 562): `import sdlab.world` or
    `sdlab world read` do not load torch, diffusers and the pipeline."""
    if name == "GenerationConfig":
        from .config import GenerationConfig

        return GenerationConfig
    if name in ("GenerationResult", "Pipeline"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'sdlab' has no attribute {name!r}")
