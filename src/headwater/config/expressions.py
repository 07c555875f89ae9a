"""Conditions over JSON, such as ``until: "status == 'Succeeded'"`` of a polling wait.

A condition is a Jinja *expression* compiled in the sandbox: comparisons, ``and``/``or``/
``not``, ``in``, literals, attribute and item access, and Jinja's filters and tests. It
can never call arbitrary Python (no ``eval``). A JSON object's keys are variables
(``status``), and the whole document is also ``response``; a name the document lacks is
undefined and falsy (comparing it is false), so ``until`` simply stays false until the
field appears.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from jinja2 import ChainableUndefined, TemplateError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment

Condition = Callable[[Any], bool]


@lru_cache(maxsize=1)
def _environment() -> SandboxedEnvironment:
    return SandboxedEnvironment(undefined=ChainableUndefined, autoescape=False)


def compile_condition(text: str) -> Condition:
    """Compile ``text`` once; raises ValueError naming the problem for a bad expression."""
    try:
        expression = _environment().compile_expression(text, undefined_to_none=True)
    except TemplateError as exc:
        raise ValueError(f"invalid condition {text!r}: {exc.message or exc}") from None

    def holds(document: Any) -> bool:
        variables: dict[str, Any] = {}
        if isinstance(document, Mapping):
            variables.update({str(k): v for k, v in document.items() if str(k).isidentifier()})
        variables["response"] = document
        try:
            return bool(expression(**variables))
        except UndefinedError:  # compares a field the document lacks (yet): not true
            return False
        except TemplateError as exc:
            raise ValueError(f"condition {text!r} failed: {exc.message or exc}") from None

    return holds
