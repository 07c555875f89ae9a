"""The layering of docs/architecture.md holds: no module imports what its layer must not,
and the public API is exactly the names we promise."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import headwater

SRC = Path(headwater.__file__).parent

FORBIDDEN = {
    "config": ("store", "engine", "steps", "server", "cli", "datasets", "triggers"),
    "store": ("engine", "steps", "server", "cli", "triggers"),
    "connectors": ("engine", "steps", "server", "cli"),
    "engine": ("server", "cli"),
    "steps": ("server", "cli"),
    "datasets": ("engine", "server", "cli"),
    "lineage": ("engine", "server", "cli"),
    "triggers": ("cli",),
    "server": ("cli",),
    "testing": ("server", "cli"),
}
ALLOWED = {("steps", "headwater.engine.plan"), ("connectors", "headwater.steps.base")}
"""Exceptions, each with a reason: steps reuse the planner's reading of ``sql:`` files;
the files connector writes rejected rows in the one schema ``steps.base`` defines."""


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports(layer: str) -> None:
    """Every module of ``layer`` stays clear of the layers it must never import."""
    offenders = []
    for path in sorted((SRC / layer).rglob("*.py")):
        for module in _imports(path):
            for banned in FORBIDDEN[layer]:
                target = f"headwater.{banned}"
                if (module == target or module.startswith(target + ".")) and \
                        (layer, module) not in ALLOWED:
                    offenders.append(f"{path.relative_to(SRC)} imports {module}")
    assert [] == offenders


def test_public_api_is_pinned() -> None:
    """The package exports exactly these names (SPEC §5), each resolvable."""
    expected = ["ConfigError", "Dataset", "HeadwaterError", "NotFoundError", "Project",
                "PublishError", "Run", "RunFailed", "SourceError", "StepError", "StepRun",
                "StoreError", "TriggerError", "ValidationError", "__version__"]
    assert expected == sorted(headwater.__all__)
    for name in expected:
        assert getattr(headwater, name) is not None


def test_exceptions_pickle_with_context() -> None:
    """Errors cross process boundaries (executors) with message and context intact."""
    import pickle

    error = headwater.SourceError("b.csv line 3: bad", step="raw", line=3)
    clone = pickle.loads(pickle.dumps(error))
    assert (type(error), error.message, error.context) == (type(clone), clone.message,
                                                           clone.context)
    assert 1 == clone.exit_code
