"""Which recorded outputs of an earlier run a rerun or a resumed run may reuse.

Reusing a recorded output is only sound if re-executing the step would give the same
answer. Two cases break that, and both duplicate rows if ignored:

- a step that carries incremental state (files seen, a cursor) recorded what it saw
  *then*; since then the state may have advanced (a later run ingested files) or the
  files changed (the malformed file was fixed). It is re-executed against the state
  committed since, and so is everything downstream of it;
- the step's code changed since the earlier run (its config, its SQL by meaning, the
  pipeline's Python, the params, or an upstream step's code): its output was made by
  other code, so it and everything downstream of it are re-executed. Runs record each
  step's code in its output; for older records the pipeline's code version decides.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headwater.config.models import PythonStep, SqlStep
from headwater.engine.plan import Plan
from headwater.steps.base import StepOutput


@dataclass(frozen=True)
class ReuseDecision:
    outputs: dict[str, StepOutput]
    """step id → the recorded output to reuse."""
    reasons: list[str]
    """Why steps asked for are re-executed instead (for the run log)."""


def step_codes(dag: Plan, root: Path, params: Mapping[str, Any]) -> dict[str, str]:
    """step id → a hash of what decides the step's output: its config (SQL by meaning, a
    ``.sql`` file's content, the pipeline's Python), the params, and its upstream's codes."""
    from headwater.config.codeversion import _python_files, python_meaning, sql_hash

    python = sorted(python_meaning(p) for p in _python_files_of(dag, root, _python_files))
    codes: dict[str, str] = {}
    for sid in dag.order:
        step = dag.steps[sid]
        doc: dict[str, Any] = {"step": step.model_dump(mode="json"), "params": dict(params),
                               "upstream": [codes[d] for d in dag.deps[sid]]}
        if isinstance(step, SqlStep):
            sql = step.sql.strip()
            is_file = sql.lower().endswith(".sql")
            doc["step"]["sql"] = _file_meaning(root / sql) if is_file else sql_hash(sql)
        if isinstance(step, PythonStep):
            doc["python"] = python
        codes[sid] = _digest(doc)
    return codes


def decide(dag: Plan, recorded: Mapping[str, StepOutput], *, parent_id: str,
           parent_code: str | None, code: str, codes: Mapping[str, str],
           continuation: bool = False, committed: frozenset[str] = frozenset()
           ) -> ReuseDecision:
    """Keep the reusable part of ``recorded`` (the parent run's outputs asked for).

    A ``continuation`` (a parked run going on after its wait) keeps its incremental
    sources: the run held the pipeline's lock all through the wait, so nothing else has
    read that state since, and re-reading would restart the step it waited on.
    ``committed`` names incremental steps whose state this very run already committed
    with one of its publishes (a run resumed after it died between two publishes): their
    recorded output is exactly what that publish took, so the others must get it too;
    re-reading a stream, a cursor or an API would hand them different rows.
    """
    changed = [sid for sid in _ordered(dag, recorded)
               if _code_changed(recorded[sid], codes.get(sid), parent_code, code)]
    incremental = [] if continuation else [
        sid for sid in _ordered(dag, recorded)
        if recorded[sid].state and sid not in committed]
    stale: set[str] = set()
    for sid in [*changed, *incremental]:
        stale |= dag.downstream(sid)
    reasons = []
    if changed:
        reasons.append(f"the code of {', '.join(changed)} changed since run {parent_id}: "
                       "re-executing instead of reusing outputs other code made")
    dropped = [sid for sid in _ordered(dag, recorded) if sid in stale and sid not in changed]
    if dropped:
        reasons.append(f"re-executing {', '.join(dropped)} instead of reusing run "
                       f"{parent_id}'s outputs: incremental sources re-read against the "
                       "state committed since (and what follows them), so no row is "
                       "ingested twice")
    kept = {sid: out for sid, out in recorded.items() if sid not in stale}
    return ReuseDecision(kept, reasons)


def _code_changed(output: StepOutput, now: str | None, parent_code: str | None,
                  code: str) -> bool:
    """Per step where the run recorded the step's code, else by the whole pipeline."""
    recorded = output.info.get("code")
    if recorded is not None:
        return bool(recorded != now)
    return parent_code is not None and parent_code != code


def _python_files_of(dag: Plan, root: Path, finder: Any) -> list[Path]:
    modules = [s for s in dag.steps.values() if isinstance(s, PythonStep)]
    if not modules:
        return []

    from types import SimpleNamespace

    # the finder reads only ``pipeline.config.steps``
    return list(finder(root, SimpleNamespace(config=SimpleNamespace(steps=modules))))


def _file_meaning(path: Path) -> str:
    from headwater.engine.codeversion import sql_meaning

    return sql_meaning(path)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _ordered(dag: Plan, steps: Mapping[str, object]) -> list[str]:
    return [sid for sid in dag.order if sid in steps]
