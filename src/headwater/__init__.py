"""headwater: data ingestion for machine learning in production.

The public Python API (SPEC §5). ``Project``, ``Run`` and ``Dataset`` load on first use,
so ``import headwater`` (and the CLI's start-up) does not pay for Arrow, DuckDB and
SQLAlchemy until a command needs them.
"""

from typing import TYPE_CHECKING, Any

from headwater.exceptions import (
    ConfigError,
    HeadwaterError,
    NotFoundError,
    PublishError,
    RunFailed,
    SourceError,
    StepError,
    StoreError,
    TriggerError,
    ValidationError,
)

if TYPE_CHECKING:
    from headwater.datasets.dataset import Dataset
    from headwater.project import Project, Run, StepRun

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "Dataset",
    "HeadwaterError",
    "NotFoundError",
    "Project",
    "PublishError",
    "Run",
    "RunFailed",
    "SourceError",
    "StepError",
    "StepRun",
    "StoreError",
    "TriggerError",
    "ValidationError",
    "__version__",
]

_LAZY = {"Project": "headwater.project", "Run": "headwater.project",
         "StepRun": "headwater.project", "Dataset": "headwater.datasets.dataset"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'headwater' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
