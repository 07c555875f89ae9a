"""The JSON Schema of pipeline files, for editor autocompletion and validation.

Generated from the same pydantic models the loader validates with, so it cannot disagree
with ``headwater check``. The repository keeps a copy in ``schema/pipeline.schema.json``;
a test fails when it drifts from the models.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import TypeAdapter

from headwater.config.models import PipelineConfig, ProjectConfig


def pipeline_schema() -> dict[str, Any]:
    schema = TypeAdapter(PipelineConfig).json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "headwater pipeline"
    return schema


def project_schema() -> dict[str, Any]:
    schema = TypeAdapter(ProjectConfig).json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "headwater project"
    return schema


def render(kind: str = "pipeline") -> str:
    doc = pipeline_schema() if kind == "pipeline" else project_schema()
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"
