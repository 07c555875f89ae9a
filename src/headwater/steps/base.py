"""The step seam: what a step kind receives, what it returns, and the registry.

A step kind is one function ``run(ctx, config) -> StepOutput`` registered under its YAML
key. Outputs are *relations*: DuckDB SQL text that yields the rows (a lazy scan of source
files, a view over earlier steps, or a Parquet spill in the run folder). Because a relation
is text, it can be recorded in the store and re-created by ``rerun --from-failed`` without
re-running the step. Lineage facts (source fingerprints, incremental state, rejected rows,
input dataset versions) ride along in the output and reach the publish step that commits
them. Step kinds must never import the engine, the server or the CLI.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import duckdb

    from headwater.runtime import ProjectRuntime

REJECTED_COLUMNS = ("_run_id", "_step", "_source", "_error", "_row")
"""The one schema of every ``<pipeline>__rejected`` dataset (SPEC §3), all strings."""


@dataclass
class StepOutput:
    """What a step hands downstream. Everything in it is JSON-serialisable."""

    relation: str | None = None
    """DuckDB SQL yielding the rows (``SELECT ... FROM read_parquet(...)``), or None."""
    rows: int | None = None
    sources: list[dict[str, Any]] = field(default_factory=list)
    """Fingerprints of what was read: ``{"step", "type", "files": [{path, size, etag}]}``."""
    state: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Incremental state to commit with the data: ``"step_id\\x1fkey" → value``."""
    rejected: list[str] = field(default_factory=list)
    """Parquet files of rejected rows (REJECTED_COLUMNS) to commit with the run's publish."""
    inputs: list[dict[str, Any]] = field(default_factory=list)
    """Dataset versions read: ``{"dataset": name, "version": n}``."""
    info: dict[str, Any] = field(default_factory=dict)
    """Kind-specific facts shown to users (a published version, a command's exit code)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "relation": self.relation,
            "rows": self.rows,
            "sources": self.sources,
            "state": self.state,
            "rejected": self.rejected,
            "inputs": self.inputs,
            "info": self.info,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StepOutput:
        return cls(
            relation=data.get("relation"),
            rows=data.get("rows"),
            sources=list(data.get("sources") or []),
            state=dict(data.get("state") or {}),
            rejected=list(data.get("rejected") or []),
            inputs=list(data.get("inputs") or []),
            info=dict(data.get("info") or {}),
        )


FanOut = Callable[[Callable[[Any], Any], Sequence[Any]], list[Any]]
"""``fan_out(func, items) -> [func(item), ...]`` run as parallel tasks on a cluster.

Given to steps by an executor that has workers (Dask); None on the local executor. The
function and the items must pickle (a module-level function, ``functools.partial`` over
plain data) and results come back in order. Each call must write its data to files and
return only their names and counts: rows never travel through the scheduler.
"""


def state_key(step_id: str, key: str) -> str:
    return f"{step_id}\x1f{key}"


def split_state_key(composite: str) -> tuple[str, str]:
    step_id, _, key = composite.partition("\x1f")
    return step_id, key


class StepContext(Protocol):
    """What the engine gives a step while it runs."""

    run_id: str
    run_seq: int
    pipeline: str
    step_id: str
    attempt: int
    code_version: str
    trigger: str
    project: ProjectRuntime
    workdir: Path
    """A folder private to this run for spills; kept until the run is pruned."""
    inputs: Mapping[str, StepOutput]
    """Direct upstream outputs by step id."""
    lineage: StepOutput
    """Sources, state, rejected rows and inputs merged from every upstream step."""
    template_vars: Mapping[str, Any]
    parking: str | None
    """Under ``headwater serve``: the server's base URL, and a waiting step may park the
    run (record a wait, raise ``steps.waits.Parked``). None: the step waits itself."""
    fan_out: FanOut | None
    """Partitioned reads hand their partitions to it when set (see ``FanOut``)."""

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection for this step's thread; earlier steps are views in it."""

    def log(self, message: str, level: str = "info", **fields: Any) -> None: ...

    def render(self, template: str) -> str:
        """Render ``{{ params.x }}``-style templates in the sandbox."""

    def cancelled(self) -> bool: ...

    def after_commit(self, done: Callable[[], None],
                     undone: Callable[[], None] | None = None) -> None:
        """Call ``done`` once the run's data and state are committed, else ``undone``.

        For work that must follow the commit, never precede it: a stream source
        acknowledges its messages here, so a crash before the commit redelivers them.
        """

    def run_child(self, run_id: str) -> dict[str, Any]:
        """Execute another (already created) run here, to the end; its final row."""


def rejected_dataset(pipeline: str) -> str:
    """The dataset a pipeline's quarantined rows are published to."""
    return f"{pipeline}__rejected"


class Parked(Exception):
    """Raised by a step that recorded a wait in the store: the engine parks the run.

    It lives here, not in ``steps.waits`` (which re-exports it), so the engine can catch
    it without importing the HTTP client every run would otherwise pay for.
    """

    def __init__(self, token: str) -> None:
        super().__init__(token)
        self.token = token


StepFunction = Callable[["StepContext", Any], StepOutput]

_REGISTRY: dict[str, StepFunction] = {}


def register(kind: str) -> Callable[[StepFunction], StepFunction]:
    """Register the function that runs steps of ``kind`` (the YAML key)."""

    def decorate(func: StepFunction) -> StepFunction:
        _REGISTRY[kind] = func
        return func

    return decorate


def step_function(kind: str) -> StepFunction:
    """The function that runs steps of ``kind``, importing only that kind's module."""
    from headwater import steps as _steps

    _steps.load(kind)
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise NotImplementedError(f"step kind {kind!r} is not available yet") from None

