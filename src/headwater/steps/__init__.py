"""Step kinds, one module each, found through the registry in ``base``."""

from __future__ import annotations

import importlib

_KIND_MODULES = ("source", "sql", "python", "validate", "publish", "command", "http",
                 "run_pipeline")


def load_all() -> None:
    """Import every step-kind module so each registers itself (idempotent, lazy)."""
    for name in _KIND_MODULES:
        load(name)


def load(kind: str) -> None:
    """Import the module of one step kind, so it registers itself (idempotent).

    A run imports only the kinds its steps use: the ``source`` module alone pulls the
    file readers, ``http`` pulls httpx; a run of SQL steps pays for neither.
    """
    if kind not in _KIND_MODULES:
        return
    try:
        importlib.import_module(f"headwater.steps.{kind}")
    except ModuleNotFoundError as exc:
        if exc.name != f"headwater.steps.{kind}":
            raise
