"""Typed pipeline params: each param's type comes from its declaration, values are coerced.

A param is declared by its default (``params: {min_amount: 0}`` makes an int) or
explicitly (``params: {day: {type: date, default: "2026-01-01"}}``). Values arriving as
text (CLI ``-p k=v``), as JSON (a webhook body) or from Python are coerced to that type or
rejected with a :class:`ParamError` naming the param, the value and the type; so a param is
always a number, a string, a date ... and never SQL text (``templates.render_sql`` turns it
into a literal). Stored values are JSON (:func:`to_json`); :func:`typed` restores dates.
This module must never import the store, the engine or any I/O library.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from headwater.exceptions import ParamError

TYPES = ("int", "float", "string", "bool", "date", "timestamp", "list", "any")
_SPEC_KEYS = frozenset({"type", "default", "description"})
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_MAX_TEXT = 10_000


@dataclass(frozen=True)
class ParamSpec:
    """One declared param: its type and default (already of that type, or None)."""

    name: str
    type: str
    default: Any


def is_explicit(declaration: Any) -> bool:
    """``{type: int, default: 5}`` declares a param's type; any other dict is a default."""
    return (isinstance(declaration, Mapping) and "type" in declaration
            and set(declaration) <= _SPEC_KEYS and declaration["type"] in TYPES)


def _type_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, datetime):
        return "timestamp"
    if isinstance(value, date):
        return "date"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, str):
        return "string"
    return "any"


def spec_of(name: str, declaration: Any) -> ParamSpec:
    """The spec of one ``params:`` entry (a default, or ``{type:, default:}``)."""
    if is_explicit(declaration):
        kind = str(declaration["type"])
        default = declaration.get("default")
        return ParamSpec(name, kind, None if default is None else coerce_one(
            ParamSpec(name, kind, None), default))
    return ParamSpec(name, _type_of(declaration), declaration)


def specs(declared: Mapping[str, Any]) -> dict[str, ParamSpec]:
    return {name: spec_of(name, value) for name, value in declared.items()}


def _reject(spec: ParamSpec, value: Any, why: str = "") -> ParamError:
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    return ParamError(f"param {spec.name!r} must be {_article(spec.type)} {spec.type}, got "
                      f"{shown}" + (f" ({why})" if why else ""))


def _article(kind: str) -> str:
    return "an" if kind[0] in "aeiou" else "a"


def _to_int(spec: ParamSpec, value: Any) -> int:
    if isinstance(value, bool):
        raise _reject(spec, value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip().replace("_", ""), 10)
        except ValueError:
            pass
    raise _reject(spec, value)


def _to_float(spec: ParamSpec, value: Any) -> float:
    if isinstance(value, bool):
        raise _reject(spec, value)
    number: float | None = None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None:
        raise _reject(spec, value)
    if not math.isfinite(number):
        raise _reject(spec, value, "NaN and infinity are not allowed")
    return number


def _to_bool(spec: ParamSpec, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _reject(spec, value, "use true or false")


def _to_date(spec: ParamSpec, value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise _reject(spec, value, "use YYYY-MM-DD")


def _to_timestamp(spec: ParamSpec, value: Any) -> datetime:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise _reject(spec, value, "use ISO 8601, e.g. 2026-12-02T10:00:00Z") from None
    else:
        raise _reject(spec, value)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _to_string(spec: ParamSpec, value: Any) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool | int) or (isinstance(value, float) and math.isfinite(value)):
        text = str(value).lower() if isinstance(value, bool) else str(value)
    elif isinstance(value, date):
        text = value.isoformat()
    else:
        raise _reject(spec, value)
    if len(text) > _MAX_TEXT:
        raise _reject(spec, text, f"longer than {_MAX_TEXT} characters")
    return text


def _to_list(spec: ParamSpec, value: Any) -> list[Any]:
    if isinstance(value, str):
        import json

        try:
            value = json.loads(value)
        except ValueError:
            value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple):
        raise _reject(spec, value, 'use a JSON list such as ["DE", "FR"] or DE,FR')
    return [_to_any(spec, item) for item in value]


def _to_any(spec: ParamSpec, value: Any) -> Any:
    """An undeclared-type param: a finite number, a bool, text or null; never SQL text."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return _to_float(spec, value)
    if isinstance(value, date):
        return value
    raise _reject(spec, value, "use a number, true/false or text")


_COERCE: dict[str, Callable[[ParamSpec, Any], Any]] = {
    "int": _to_int, "float": _to_float, "bool": _to_bool, "date": _to_date,
    "timestamp": _to_timestamp, "string": _to_string, "list": _to_list, "any": _to_any,
}


def coerce_one(spec: ParamSpec, value: Any) -> Any:
    """``value`` as the param's type (None stays None), or a ParamError."""
    if value is None:
        return None
    return _COERCE[spec.type](spec, value)


def to_json(value: Any) -> Any:
    """A coerced value as JSON for the store: dates as ISO text, everything else as is."""
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, list):
        return [to_json(item) for item in value]
    return value


def typed(declared: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """Params for templates: every declared param with its typed value (stored or default).

    Values that no longer fit (the declaration changed since the run was queued) keep their
    stored JSON form rather than failing a run that is already under way.
    """
    out: dict[str, Any] = {}
    declared_specs = specs(declared)
    for name, spec in declared_specs.items():
        out[name] = spec.default
    for name, value in values.items():
        spec = declared_specs.get(name, ParamSpec(name, "any", None))
        try:
            out[name] = coerce_one(spec, value)
        except ParamError:
            out[name] = value
    return out


def run_params(project_params: Mapping[str, Any], declared: Mapping[str, Any],
               values: Mapping[str, Any], root: Any = None) -> dict[str, Any]:
    """The params a run's templates see: project params, then the pipeline's, then the run's.

    ``${env:}``/``${file:}`` references in declared values are resolved here (at run
    time, never stored) and their values join the redactor.
    """
    from headwater.config.secrets import resolve_deep

    merged = {**resolve_deep(dict(project_params), root), **resolve_deep(dict(declared), root)}
    return typed(merged, values)
