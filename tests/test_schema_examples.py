"""The JSON Schema tells the truth: every example a user reads validates against it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SCHEMAS = {kind: json.loads((REPO / "schema" / f"{kind}.schema.json").read_text())
           for kind in ("pipeline", "project")}
FENCE = re.compile(r"```yaml\n(.*?)```", re.S)


def _examples() -> list[tuple[str, str, Any]]:
    """(where, schema kind, document) of every YAML example in README, docs/ and init."""
    from headwater.scaffold import init

    found = [("scaffold orders.yaml", "pipeline", yaml.safe_load(init.ORDERS_YAML)),
             ("scaffold headwater.yaml", "project", yaml.safe_load(init.PROJECT_YAML))]
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for number, block in enumerate(FENCE.findall(doc.read_text(encoding="utf-8")), 1):
            data = yaml.safe_load(block)
            if not isinstance(data, dict) or "name" not in data:
                continue  # a fragment, not a whole file
            kind = "pipeline" if "steps" in data else "project"
            found.append((f"{doc.name} yaml block {number}", kind, data))
    return found


@pytest.mark.parametrize(("where", "kind", "document"), _examples(),
                         ids=[e[0] for e in _examples()])
def test_example_validates(where: str, kind: str, document: Any) -> None:
    """Durations as text (1s, 10m), 'executor: local', dataset sources: the schema editors
    use accepts what the models accept, in every example we show."""
    import jsonschema

    errors = [e.message for e in jsonschema.Draft202012Validator(SCHEMAS[kind])
              .iter_errors(document)]
    assert [] == errors, where


def test_schema_accepts_what_models_accept() -> None:
    """A document using every shorthand the models take also passes the schema."""
    import jsonschema

    pipeline = {"name": "p", "steps": [
        {"id": "a", "source": {"type": "dataset", "dataset": "orders", "version": 2},
         "timeout": "10m", "retries": {"count": 3, "backoff": "2s"}},
        {"id": "b", "sql": "SELECT * FROM a"}],
        "triggers": [{"interval": "15m"}, {"files": {"path": "x", "settle": "500ms"}}]}
    jsonschema.validate(pipeline, SCHEMAS["pipeline"])
    jsonschema.validate({"name": "x", "executor": "local"}, SCHEMAS["project"])
    from headwater.config.models import PipelineConfig, ProjectConfig

    PipelineConfig.model_validate(pipeline)
    ProjectConfig.model_validate({"name": "x", "executor": "local"})
