"""The code version of a pipeline, for the engine (which records it with every run).

The logic lives in :mod:`headwater.config.codeversion`: it reads only project files, so
``lineage`` (which must not import the engine) can tell staleness from the code on disk
too. This module keeps the engine's import path.
"""

from __future__ import annotations

from headwater.config.codeversion import (
    MISSING,
    CodeVersion,
    code_version,
    pipeline_meaning,
    project_meaning,
    python_meaning,
    sql_hash,
    sql_meaning,
    sql_tokens,
    yaml_meaning,
)

__all__ = [
    "MISSING",
    "CodeVersion",
    "code_version",
    "pipeline_meaning",
    "project_meaning",
    "python_meaning",
    "sql_hash",
    "sql_meaning",
    "sql_tokens",
    "yaml_meaning",
]
