"""sdlab: generate, understand, steer and personalize latent diffusion models."""

__version__ = "0.1.0"

from .config import GenerationConfig  # noqa: E402
from .pipeline import GenerationResult, Pipeline  # noqa: E402

__all__ = ["GenerationConfig", "GenerationResult", "Pipeline", "__version__"]
