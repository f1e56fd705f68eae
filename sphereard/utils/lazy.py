"""Lazy package exports (PEP 562): `from sphereard.ar import create_generator` imports only the
submodule that defines it, not the whole package.

This keeps each DVC stage's executed code, and so its code dependencies (`scripts/stage_deps.py`,
which reads the `_EXPORTS` literal of a package's `__init__.py`), down to what it really uses.

    _EXPORTS = {"create_generator": "presets", ...}          # public name -> submodule
    __getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str,
                 exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """(`__getattr__`, `__dir__`, `__all__`) for `package`, importing `package.<submodule>` on first use.

    Raises AttributeError for names not in `exports`, as a module without the attribute would."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__, sorted(exports)
