"""Reading a webhook's body: bytes from an unauthenticated world → run params, or a 4xx.

The caller checks the token first; this only turns the (size-capped) bytes into the
``params`` object, refusing what JSON allows but a param never is (NaN, Infinity, a list),
so no body can become a 500. ``{"params": {...}}`` or the bare object are both accepted.
"""

from __future__ import annotations

import json
import math
from typing import Any


class BadBody(Exception):
    """A body that cannot be params: ``status`` (400/422) and a ``detail`` for the caller."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _no_constant(name: str) -> Any:
    raise BadBody(400, f"{name} is not a valid JSON value here")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadBody(400, f"number {text[:40]} is out of range")
    return value


def parse_params(raw: bytes) -> dict[str, Any]:
    """The run params a webhook body carries (``{}`` for an empty body)."""
    if not raw.strip():
        return {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadBody(400, "the body must be UTF-8 JSON") from None
    try:
        body = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, RecursionError) as exc:
        raise BadBody(400, f"the body is not valid JSON: {str(exc)[:120]}") from None
    if not isinstance(body, dict):
        raise BadBody(422, 'the body must be a JSON object, e.g. {"params": {"day": '
                           '"2026-12-02"}}')
    params = body.get("params", body)
    if not isinstance(params, dict):
        raise BadBody(422, "params must be a JSON object of name: value")
    return params
