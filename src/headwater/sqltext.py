"""Quoting for the DuckDB SQL headwater writes: one place, so every module quotes alike.

Identifiers get double quotes (embedded ones doubled), text literals single quotes
(embedded ones doubled), and a relation becomes a subquery whether it is a bare view name
or a full query. Pure string functions; this module imports nothing of headwater.
"""

from __future__ import annotations

import re

_PART = r'(?:[A-Za-z_][\w$]*|"(?:[^"]|"")+")'
_NAME = re.compile(rf"^{_PART}(?:\.{_PART})*$")
"""A bare, possibly qualified, name: ``orders``, ``"my view"``, ``main.orders``."""


def ident(name: str) -> str:
    """A quoted SQL identifier: ``a"b`` → ``"a""b"``."""
    return '"' + name.replace('"', '""') + '"'


def text(value: str) -> str:
    """A SQL string literal, safe for any path or value: ``it's`` → ``'it''s'``."""
    return "'" + value.replace("'", "''") + "'"


def subquery(relation: str) -> str:
    """``relation`` usable after FROM: a view name as ``(FROM name)``, a query in parens."""
    body = relation.strip().rstrip(";")
    return f"(FROM {body})" if _NAME.match(body) else f"({body})"
