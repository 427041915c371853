"""Training methods on the shared loop, one module each, listed in the registry: `get(name)`
gives a method's MethodSpec (options, recipe, CLI flags, result use, card line, memory)."""

from .registry import MethodSpec, get, names, register, specs, unregister

__all__ = ["MethodSpec", "get", "names", "register", "specs", "unregister"]
