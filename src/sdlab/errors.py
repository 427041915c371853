"""Errors that sdlab raises for bad input: each says what was wrong and what is allowed."""


class SdlabError(Exception):
    """Base class: a user-facing error whose message is one clear line."""


class ConfigError(SdlabError, ValueError):
    """A setting is out of range or of the wrong type."""


class ModelLoadError(SdlabError):
    """A model path is missing, malformed or of an unknown kind."""


class ImageReadError(SdlabError):
    """An input image could not be read."""


class Cancelled(SdlabError):
    """Work was cancelled through a CancelToken or a callback."""


class NonFiniteError(SdlabError):
    """Sampling or decoding produced NaN/inf values (broken weights, fp16 overflow)."""
