"""Package attributes imported on first use (PEP 562): importing a package for one light
submodule (declared options, names) does not load torch through its siblings, so `sdlab --help`
and `sdlab COMMAND --help` start fast."""

from __future__ import annotations

import importlib
import sys


def lazy_exports(package: str, exports: dict[str, tuple[str, ...]]):
    """(__getattr__, __dir__) for `package`'s __init__; `exports` maps a submodule (".name") to
    the attributes it provides. `from package import X` then imports X's submodule on first use."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name], package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__
