"""Step kinds, one module each, found through the registry in ``base``."""

from __future__ import annotations

import importlib

_KIND_MODULES = ("source", "sql", "python", "validate", "publish", "command", "http",
                 "run_pipeline")


def load_all() -> None:
    """Import every step-kind module so each registers itself (idempotent, lazy)."""
    for name in _KIND_MODULES:
        try:
            importlib.import_module(f"headwater.steps.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"headwater.steps.{name}":
                raise
