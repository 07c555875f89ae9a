"""``headwater plan`` and ``headwater deploy``: what a deploy would change, and doing it.

The comparison is between the project on disk (with the chosen environment's overlay)
and what the last deploy recorded in that environment's store: pipelines added or
removed, code versions changed (naming the files whose meaning changed), triggers
added, removed or changed, and datasets whose schema would change. ``deploy`` records
the current state; servers on that store see the new deployment and reload their
pipelines without a restart. The CLI only renders these results. Never import the
server or the CLI from here.

Schema changes are what can be known without running the pipeline: the column types a
publish step's input declares — a ``validate`` step's ``columns: {c: {type: T}}`` (it
casts to them) or a files source's ``columns: {c: T}`` — compared with the schema of the
dataset's newest version in the environment's store. Columns a SQL or Python step computes
are known only after a run; ``headwater test`` with a ``<dataset>.yaml`` ``schema:``
expectation is where CI catches those.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from headwater.runtime import ProjectRuntime


@dataclass(frozen=True)
class Change:
    """One difference between the project and the deployed state."""

    kind: str
    """pipeline_added, pipeline_removed, code_changed, trigger_added, trigger_removed,
    trigger_changed, schema_changed."""
    pipeline: str
    detail: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        d = self.detail
        if self.kind == "pipeline_added":
            return f"+ pipeline {self.pipeline} (new, code {d['code_version']})"
        if self.kind == "pipeline_removed":
            return f"- pipeline {self.pipeline} (no longer in the project)"
        if self.kind == "code_changed":
            return (f"~ pipeline {self.pipeline}: code {d['from']} -> {d['to']} "
                    f"({', '.join(d['files'])})")
        if self.kind == "schema_changed":
            parts = [f"{c['column']} {c['from']} -> {c['to']}" if c["from"]
                     else f"+ {c['column']} {c['to']}" for c in d["columns"]]
            frozen = " (schema: freeze, so the run would fail)" if d.get("frozen") else ""
            return f"~ dataset {d['dataset']} ({self.pipeline}): {'; '.join(parts)}{frozen}"
        sign = {"trigger_added": "+", "trigger_removed": "-", "trigger_changed": "~"}[self.kind]
        return f"{sign} trigger {self.pipeline}.{d['index']}: {json.dumps(d['spec'])}"


def _trigger_specs(runtime: ProjectRuntime, name: str) -> list[dict[str, Any]]:
    pf = runtime.pipeline(name)
    enabled = runtime.triggers_enabled(name)
    return [{**t.model_dump(mode="json", exclude_none=True), **({} if enabled else
                                                                {"enabled": False})}
            for t in pf.config.triggers]


def current_state(runtime: ProjectRuntime) -> dict[str, dict[str, Any]]:
    """pipeline → {code_version, files, triggers} as the project on disk has them."""
    from headwater.config.codeversion import code_version

    out: dict[str, dict[str, Any]] = {}
    for name, pf in sorted(runtime.pipelines.items()):
        version = code_version(runtime.root, pf)
        out[name] = {"code_version": version.hash, "files": version.files,
                     "triggers": _trigger_specs(runtime, name)}
    return out


def plan(runtime: ProjectRuntime) -> list[Change]:
    """Every change a deploy would make to the environment's store, in a stable order."""
    from headwater.store.deployments import deployed

    current = current_state(runtime)
    before = deployed(runtime.store)
    changes: list[Change] = []
    for name, doc in current.items():
        old = before.get(name)
        if old is None:
            changes.append(Change("pipeline_added", name, {"code_version": doc["code_version"]}))
            continue
        if old["code_version"] != doc["code_version"]:
            paths = set(old["files"]) | set(doc["files"])
            files = sorted(p for p in paths if old["files"].get(p) != doc["files"].get(p))
            changes.append(Change("code_changed", name, {
                "from": old["code_version"], "to": doc["code_version"], "files": files}))
        changes.extend(_trigger_changes(name, list(old["triggers"]), doc["triggers"]))
    changes.extend(Change("pipeline_removed", name) for name in sorted(set(before) - set(current)))
    touched = {c.pipeline for c in changes if c.kind in ("pipeline_added", "code_changed")}
    changes.extend(schema_changes(runtime, touched))
    return changes


def schema_changes(runtime: ProjectRuntime, pipelines: set[str]) -> list[Change]:
    """Datasets of ``pipelines`` (those the deploy changes) whose declared column types
    differ from their newest version's schema. Pipelines already deployed are left out:
    their next run changes nothing a deploy decides."""
    from headwater.config.models import PublishStep
    from headwater.exceptions import NotFoundError

    out: list[Change] = []
    for name, pf in sorted(runtime.pipelines.items()):
        if name not in pipelines:
            continue
        steps = {step.id: step for step in pf.config.steps}
        for step in pf.config.steps:
            if not isinstance(step, PublishStep):
                continue
            declared = declared_columns(steps.get(step.publish.input))
            if not declared:
                continue
            try:
                record = runtime.store.version(step.publish.dataset)
            except NotFoundError:
                continue  # never published here: nothing to change
            current = {c["name"]: c["type"] for c in record["schema"]}
            columns = [{"column": col, "from": current.get(col), "to": dtype}
                       for col, dtype in declared.items() if current.get(col) != dtype]
            if columns:
                out.append(Change("schema_changed", name, {
                    "dataset": step.publish.dataset, "columns": columns,
                    "frozen": step.publish.schema_ == "freeze"}))
    return out


def declared_columns(step: Any) -> dict[str, str]:
    """column → Arrow type name (as dataset schemas record it) that ``step``'s output is
    known to have without running it; {} when nothing is declared."""
    from headwater.config.models import FilesSource, SourceStep, ValidateStep

    names: dict[str, str] = {}
    if isinstance(step, ValidateStep):
        names = {c: spec.type for c, spec in step.validate_.columns.items() if spec.type}
    elif isinstance(step, SourceStep) and isinstance(step.source, FilesSource):
        names = dict(step.source.columns)
    out = {}
    for column, type_name in names.items():
        arrow = arrow_type(type_name)
        if arrow is not None:
            out[column] = arrow
    return out


def arrow_type(type_name: str) -> str | None:
    """The Arrow type a declared type becomes (``float64`` → ``double``), by asking DuckDB
    — the engine that casts — so the names match published schemas; None if unknown
    (``headwater check`` reports an unknown type)."""
    import duckdb

    from headwater.exceptions import ConfigError
    from headwater.steps.validate import duckdb_type

    try:
        sql_type = duckdb_type(type_name)
    except ConfigError:
        return None
    with duckdb.connect() as con:
        table = con.sql(f"SELECT CAST(NULL AS {sql_type}) AS c").to_arrow_table()
    return str(table.schema.field(0).type)


def _trigger_changes(name: str, old: list[Any], new: list[Any]) -> list[Change]:
    out = []
    for index in range(max(len(old), len(new))):
        if index >= len(old):
            out.append(Change("trigger_added", name, {"index": index, "spec": new[index]}))
        elif index >= len(new):
            out.append(Change("trigger_removed", name, {"index": index, "spec": old[index]}))
        elif old[index] != new[index]:
            out.append(Change("trigger_changed", name, {"index": index, "spec": new[index],
                                                        "was": old[index]}))
    return out


def deploy(runtime: ProjectRuntime) -> tuple[list[Change], int]:
    """Record the project as deployed in the environment's store; (changes, deployment id).

    Refuses a project with problems: what ``headwater check`` reports must be fixed first.
    """
    from headwater.checks import check_project
    from headwater.exceptions import ConfigError
    from headwater.store.deployments import deployed, latest_id, record

    problems = [p for p in check_project(runtime) if p.get("level") != "warning"]
    if problems:
        first = problems[0]
        raise ConfigError(f"not deploying: {len(problems)} problem(s), e.g. {first['file']}:"
                          f"{first.get('line') or ''} {first['message']} (run 'headwater "
                          "check')", problems=problems)
    changes = plan(runtime)
    if not changes:
        return changes, latest_id(runtime.store)
    current = current_state(runtime)
    removed = set(deployed(runtime.store)) - set(current)
    return changes, record(runtime.store, runtime.env, current, removed)
