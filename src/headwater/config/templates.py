"""Render ``{{ params.x }}``, ``{{ run.id }}``, ``{{ trigger.files }}``, ``{{ window.start }}``.

Templates run in Jinja's sandbox with undefined names as errors, so a typo in a template
fails the step with the name instead of silently rendering an empty string.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment


@lru_cache(maxsize=1)
def _environment() -> SandboxedEnvironment:
    return SandboxedEnvironment(undefined=StrictUndefined, autoescape=False,
                                keep_trailing_newline=True)


def render(template: str, variables: Mapping[str, Any]) -> str:
    """Render ``template``; raises ValueError naming the problem for a bad template."""
    if "{{" not in template and "{%" not in template:
        return template
    try:
        return _environment().from_string(template).render(**variables)
    except TemplateError as exc:
        raise ValueError(f"template error: {exc.message or exc}") from None


def is_template(text: str) -> bool:
    return "{{" in text or "{%" in text
