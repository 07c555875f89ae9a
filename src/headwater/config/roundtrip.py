"""Write a pipeline document back to YAML without losing what a person wrote.

The builder (UI and API) sends a whole pipeline as JSON. Dumping that would throw away
the file's comments, key order, quoting and flow style. Instead the file is loaded with
ruamel.yaml's round-trip loader and the new document is merged into it: unchanged values
stay the very objects that were read (with their comments), changed scalars are replaced
in place, removed keys go, new keys are appended, steps are matched by ``id``. Pure text
in, text out; this module never touches the disk or the store.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq


def _yaml(text: str = "") -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap a long line someone wrote on one line
    offset = _sequence_offset(text)
    yaml.indent(mapping=2, sequence=offset + 2, offset=offset)
    return yaml


def _sequence_offset(text: str) -> int:
    """How far the file indents ``- item`` under its key (2 when it has no lists yet)."""
    found = re.search(r"^[A-Za-z_][\w-]*:\s*(?:#.*)?\n(?:\s*#.*\n)*( *)- ", text, re.M)
    return len(found.group(1)) if found else 2


def render(new: Mapping[str, Any], old_text: str | None = None) -> str:
    """YAML text of ``new``: ``old_text`` with only the differences applied, if given."""
    yaml = _yaml(old_text or "")
    document: Any = yaml.load(old_text) if old_text and old_text.strip() else None
    if isinstance(document, CommentedMap):
        _merge_map(document, new)
    else:
        document = _plain(new)
    out = io.StringIO()
    yaml.dump(document, out)
    return out.getvalue()


def _plain(value: Any) -> Any:
    """A JSON value as ruamel containers (block style, as a person would write it)."""
    if isinstance(value, Mapping):
        out = CommentedMap()
        for key, item in value.items():
            out[key] = _plain(item)
        return out
    if isinstance(value, list):
        return CommentedSeq([_plain(v) for v in value])
    return value


def _merge_map(old: CommentedMap, new: Mapping[str, Any]) -> None:
    for key in [k for k in old if k not in new]:
        del old[key]
    for key, value in new.items():
        if key in old:
            old[key] = _merge(old[key], value)
        else:
            old[key] = _plain(value)


def _merge(old: Any, new: Any) -> Any:
    if isinstance(old, CommentedMap) and isinstance(new, Mapping):
        _merge_map(old, new)
        return old
    if isinstance(old, CommentedSeq) and isinstance(new, list):
        _merge_seq(old, new)
        return old
    if _same_scalar(old, new):
        return old  # keeps its quoting and formatting
    return _plain(new)


def _same_scalar(old: Any, new: Any) -> bool:
    """Equal, and not ``1 == True``: a changed type is a change."""
    return bool(old == new) and isinstance(old, bool) == isinstance(new, bool)


def _merge_seq(old: CommentedSeq, new: list[Any]) -> None:
    """Items matched by ``id`` when they have one (steps), else by position."""
    by_id = {item.get("id"): item for item in old
             if isinstance(item, CommentedMap) and item.get("id") is not None}
    merged = []
    for index, value in enumerate(new):
        key = value.get("id") if isinstance(value, Mapping) else None
        if key is not None and key in by_id:
            merged.append(_merge(by_id.pop(key), value))
        elif key is None and index < len(old) and not _has_id(old[index]):
            merged.append(_merge(old[index], value))
        else:
            merged.append(_plain(value))
    if len(merged) == len(old) and all(a is b for a, b in zip(merged, old, strict=True)):
        return  # same items in the same order: leave the list (and its comments) alone
    del old[:]
    old.extend(merged)


def _has_id(item: Any) -> bool:
    return isinstance(item, CommentedMap) and item.get("id") is not None


def load(text: str) -> Any:
    """The plain (JSON-shaped) document of YAML text."""
    return _to_json(_yaml(text).load(text))


def _to_json(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return value.isoformat() if hasattr(value, "isoformat") else str(value)
