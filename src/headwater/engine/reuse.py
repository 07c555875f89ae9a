"""Which recorded outputs of an earlier run a rerun or a resumed run may reuse.

Reusing a recorded output is only sound if re-executing the step would give the same
answer. Two cases break that, and both duplicate rows if ignored:

- a step that carries incremental state (files seen, a cursor) recorded what it saw
  *then*; since then the state may have advanced (a later run ingested files) or the
  files changed (the malformed file was fixed). It is re-executed against the state
  committed since, and so is everything downstream of it;
- the pipeline's code changed since the earlier run: its outputs were made by other code,
  so nothing is reused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from headwater.engine.plan import Plan
from headwater.steps.base import StepOutput


@dataclass(frozen=True)
class ReuseDecision:
    outputs: dict[str, StepOutput]
    """step id → the recorded output to reuse."""
    recomputed: list[str]
    """Steps asked for but re-executed instead, in plan order."""
    reason: str | None
    """Why they are re-executed (for the run log), or None."""


def decide(dag: Plan, recorded: Mapping[str, StepOutput], *, parent_id: str,
           parent_code: str | None, code: str) -> ReuseDecision:
    """Keep the reusable part of ``recorded`` (the parent run's outputs asked for)."""
    if not recorded:
        return ReuseDecision({}, [], None)
    if parent_code is not None and parent_code != code:
        return ReuseDecision({}, _ordered(dag, recorded), (
            f"the pipeline's code changed since run {parent_id} (code version "
            f"{parent_code} → {code}): re-executing every step instead of reusing outputs "
            "another code version made"))
    stale: set[str] = set()
    for sid, output in recorded.items():
        if output.state:
            stale |= dag.downstream(sid)
    kept = {sid: out for sid, out in recorded.items() if sid not in stale}
    dropped = [sid for sid in _ordered(dag, recorded) if sid in stale]
    reason = None
    if dropped:
        reason = (f"re-executing {', '.join(dropped)} instead of reusing run {parent_id}'s "
                  "outputs: incremental sources re-read against the state committed since, "
                  "so no row is ingested twice")
    return ReuseDecision(kept, dropped, reason)


def _ordered(dag: Plan, steps: Mapping[str, object]) -> list[str]:
    return [sid for sid in dag.order if sid in steps]
