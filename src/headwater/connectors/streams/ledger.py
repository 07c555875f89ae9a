"""What a stream source has already committed, kept as incremental state.

Messages are acknowledged only after the dataset commit, so a crash between the two
redelivers messages whose rows are already in the dataset. The ledger remembers which
messages were committed (it advances in the same store transaction as the data), and
the next run drops (and acknowledges) every redelivered message it finds there. That
is what makes "at least once from the broker" become "exactly once in the dataset".

Three shapes, one per kind of message identity a broker offers:

- :class:`SeqLedger`: integer sequence numbers (NATS JetStream stream sequence), kept
  as exact ranges and pruned below the consumer's ack floor (never redelivered again).
- :class:`SpanLedger`: ordered ids read in stream order (Redis entry ids), one span per
  batch; a bounded number of recent spans.
- :class:`WindowLedger`: opaque identities (RabbitMQ ``message_id`` or a content hash,
  MQTT topic + packet id + content hash), a bounded window of the most recent ones.

A ledger never talks to a broker and never raises for odd state: state written by an
older version that it cannot read is treated as empty (and says so in ``problem``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

MAX_SPANS = 256
"""Batches a SpanLedger remembers: only the last few can still be redelivered."""
MAX_WINDOW = 200_000
"""Identities a WindowLedger remembers: redeliveries come within a run or two."""


class Ledger(Protocol):
    """The committed-message set of one stream source step."""

    def seen(self, key: Any) -> bool:
        """Whether the message with this identity is already committed."""
        ...

    def add(self, keys: Iterable[Any]) -> None:
        """Remember these identities as committed (with the coming publish)."""
        ...

    def to_state(self) -> dict[str, Any]:
        """The JSON form stored as incremental state."""
        ...


class SeqLedger:
    """Exact ranges of committed integer sequence numbers; see the module docstring."""

    kind = "seq"

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self.ranges: list[tuple[int, int]] = _merge(ranges)

    @classmethod
    def from_state(cls, state: Mapping[str, Any] | None) -> SeqLedger:
        if not state or state.get("kind") != cls.kind:
            return cls()
        return cls((int(lo), int(hi)) for lo, hi in state.get("ranges", []))

    def seen(self, key: Any) -> bool:
        seq = int(key)
        return any(lo <= seq <= hi for lo, hi in self.ranges)

    def add(self, keys: Iterable[Any]) -> None:
        self.ranges = _merge([*self.ranges, *((int(k), int(k)) for k in keys)])

    def prune(self, floor: int) -> None:
        """Forget everything at or below ``floor``: acknowledged, never delivered again."""
        self.ranges = [(max(lo, floor + 1), hi) for lo, hi in self.ranges if hi > floor]

    def to_state(self) -> dict[str, Any]:
        return {"kind": self.kind, "ranges": [[lo, hi] for lo, hi in self.ranges]}


def _merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, non-overlapping ranges; adjacent ones joined (5-7 and 8-9 → 5-9)."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


class SpanLedger:
    """Spans ``[first, last]`` of ids in stream order, one per committed batch.

    Correct for a consumer group read in order (Redis): a batch is the pending entries
    from the oldest on, then new entries in stream order, so every id between a batch's
    first and last that could still be redelivered belongs to that batch.
    """

    kind = "span"

    def __init__(self, spans: Iterable[tuple[str, str]] = ()) -> None:
        self.spans: list[tuple[str, str]] = list(spans)[-MAX_SPANS:]

    @classmethod
    def from_state(cls, state: Mapping[str, Any] | None) -> SpanLedger:
        if not state or state.get("kind") != cls.kind:
            return cls()
        return cls((str(a), str(b)) for a, b in state.get("spans", []))

    def seen(self, key: Any) -> bool:
        order = redis_id_order(str(key))
        return any(redis_id_order(a) <= order <= redis_id_order(b) for a, b in self.spans)

    def add(self, keys: Iterable[Any]) -> None:
        ids = sorted((str(k) for k in keys), key=redis_id_order)
        if ids:
            self.spans = [*self.spans, (ids[0], ids[-1])][-MAX_SPANS:]

    def to_state(self) -> dict[str, Any]:
        return {"kind": self.kind, "spans": [[a, b] for a, b in self.spans]}


def redis_id_order(entry_id: str) -> tuple[int, int]:
    """A Redis stream id ``<millis>-<seq>`` as a sortable pair."""
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq or 0)


class WindowLedger:
    """The most recent committed identities, oldest forgotten first."""

    kind = "window"

    def __init__(self, keys: Iterable[str] = (), cap: int = MAX_WINDOW) -> None:
        self.cap = cap
        self.keys: dict[str, None] = {}
        self.add(keys)

    @classmethod
    def from_state(cls, state: Mapping[str, Any] | None,
                   cap: int = MAX_WINDOW) -> WindowLedger:
        if not state or state.get("kind") != cls.kind:
            return cls(cap=cap)
        return cls((str(k) for k in state.get("keys", [])), cap=cap)

    def seen(self, key: Any) -> bool:
        return str(key) in self.keys

    def add(self, keys: Iterable[Any]) -> None:
        for key in keys:
            self.keys.pop(str(key), None)
            self.keys[str(key)] = None
        overflow = len(self.keys) - self.cap
        if overflow > 0:
            for key in list(self.keys)[:overflow]:
                del self.keys[key]

    def to_state(self) -> dict[str, Any]:
        return {"kind": self.kind, "keys": list(self.keys)}
