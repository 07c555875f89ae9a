"""What the API answers and the pages draw: one function per document, JSON-ready.

Each ``/api/...`` endpoint returns one of these documents and each page renders the same
one, so the UI can never show something the API does not (datasette's rule). They call
the functions the CLI uses (``project``, ``lineage``, ``datasets``, ``triggers``); none
formats HTML, and none writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from headwater.config.models import PublishStep
from headwater.config.secrets import REDACTOR
from headwater.exceptions import HeadwaterError, NotFoundError
from headwater.store import listing

if TYPE_CHECKING:
    from headwater.datasets.dataset import Dataset
    from headwater.server.service import Server

RUN_KEYS = ("id", "seq", "pipeline", "status", "trigger", "trigger_info", "params",
            "created_at", "started_at", "finished_at", "error", "failed_step", "worker",
            "code_version", "parent_run_id", "from_step")
STEP_KEYS = ("id", "step_id", "kind", "attempt", "status", "started_at", "finished_at",
             "seconds", "rows_in", "rows_out", "bytes", "error")


def jsonable(value: Any) -> Any:
    """Datetimes as ISO text, recursively; secrets masked."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def run_doc(row: Mapping[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = REDACTOR.deep(jsonable({k: row.get(k) for k in RUN_KEYS}))
    started, finished = row.get("started_at"), row.get("finished_at")
    doc["seconds"] = (finished - started).total_seconds() if started and finished else None
    return doc


# --------------------------------------------------------------------------- pipelines


def pipelines(server: Server, only: str | None = None) -> list[dict[str, Any]]:
    """Every pipeline (or ``only`` one) with its last run, next fire and stale flag;
    failures first. A fixed number of queries, however many pipelines and runs."""
    runtime = server.runtime
    last = listing.last_runs(server.store)
    last_ok = listing.last_runs(server.store, status="succeeded")
    triggers = _trigger_summaries(server)
    out = []
    for name, pf in sorted(runtime.pipelines.items()):
        if only is not None and name != only:
            continue
        own = triggers.get(name, [])
        nexts = sorted(t["next_fire_at"] for t in own if t["next_fire_at"] and t["enabled"])
        run = last.get(name)
        current = _code_version(server, name)
        made_by = (last_ok.get(name) or {}).get("code_version")
        out.append({
            "name": name, "description": pf.config.description, "file": pf.display,
            "steps": len(pf.config.steps), "params": jsonable(pf.config.params),
            "triggers": [{k: t[k] for k in ("id", "kind", "enabled")} for t in own],
            "last_run": run_doc(run) if run else None,
            "next_fire_at": nexts[0] if nexts else None,
            "code_version": current,
            "stale": bool(current and made_by and made_by != current),
        })
    out.sort(key=lambda p: (0 if (p["last_run"] or {}).get("status") == "failed" else 1,
                            p["name"]))
    return out


def _trigger_summaries(server: Server) -> dict[str, list[dict[str, Any]]]:
    """pipeline → its triggers' id, kind, enabled and next fire, from one store read."""
    from headwater.store.queue import trigger_states

    states = trigger_states(server.store)
    live = {(a.pipeline, a.index): a.trigger.status for a in server.triggers}
    out: dict[str, list[dict[str, Any]]] = {}
    for name, pf in server.runtime.pipelines.items():
        for index, config in enumerate(pf.config.triggers):
            state = states.get((name, index), {})
            status = live.get((name, index))
            upcoming = status.next_fire_at if status else state.get("next_fire_at")
            out.setdefault(name, []).append({
                "id": f"{name}.{index}", "kind": config.kind,
                "enabled": bool(state.get("enabled", True)),
                "next_fire_at": jsonable(upcoming) if upcoming else _next_fire(config)})
    return out


def _next_fire(config: Any) -> str | None:
    """A schedule's next time when no server has armed it yet (as ``triggers`` shows)."""
    if config.schedule is None and config.interval is None:
        return None
    from headwater.triggers.base import utcnow

    key, now = repr(config), utcnow()
    cached = _NEXT.get(key)
    if cached is not None and cached > now:  # still ahead: parsing cron again gives the same
        return cached.isoformat()
    try:
        from headwater.triggers.schedule import schedule_for

        upcoming = schedule_for(config).next_after(now)
    except Exception:  # noqa: BLE001 - an invalid cron has no next time (check reports it)
        return None
    _NEXT[key] = upcoming
    return upcoming.isoformat()


_NEXT: dict[str, datetime] = {}


_CODE: dict[str, tuple[tuple[Any, ...], float, str | None]] = {}
CODE_TTL = 10.0
"""Seconds a pipeline's computed code version is reused while its file is unchanged: the
hash reads and parses every file the pipeline uses, too slow to redo on every page."""


def _code_version(server: Server, name: str) -> str | None:
    import time

    from headwater.engine.codeversion import code_version

    try:
        pf = server.runtime.pipeline(name)
        stat = pf.path.stat()
    except (HeadwaterError, OSError):
        return None
    key = (str(pf.path), stat.st_mtime_ns, stat.st_size)
    cached = _CODE.get(name)
    if cached is not None and cached[0] == key and time.monotonic() - cached[1] < CODE_TTL:
        return cached[2]
    try:
        value: str | None = code_version(server.runtime.root, pf).hash
    except (HeadwaterError, OSError):
        value = None
    _CODE[name] = (key, time.monotonic(), value)
    return value


def pipeline(server: Server, name: str) -> dict[str, Any]:
    """One pipeline: summary, DAG, triggers with state, params, recent runs."""
    from headwater.triggers.registry import trigger_table

    pf = server.runtime.pipeline(name)
    [summary] = pipelines(server, only=name)
    triggers = [t for t in trigger_table(server.runtime, server) if t["pipeline"] == name]
    recent = listing.runs_page(server.store, pipeline=name, limit=20)
    return {**summary, "dag": dag(server, name), "triggers": REDACTOR.deep(triggers),
            "recent_runs": [run_doc(r) for r in recent],
            "datasets": sorted({s.publish.dataset for s in pf.config.steps
                                if isinstance(s, PublishStep)})}


def dag(server: Server, name: str) -> dict[str, Any]:
    """The steps as nodes and their dependencies as edges (``engine.plan``'s reading)."""
    from headwater.engine.plan import plan

    pf = server.runtime.pipeline(name)
    try:
        planned = plan(pf, server.runtime.root)
    except HeadwaterError as exc:
        return {"nodes": [], "edges": [], "error": REDACTOR(exc.message)}
    nodes = [{"id": sid, "kind": planned.kind(sid), "label": sid} for sid in planned.order]
    edges = [{"source": dep, "target": sid} for sid in planned.order
             for dep in planned.deps[sid]]
    return {"nodes": nodes, "edges": edges}


# --------------------------------------------------------------------------- runs


def runs(server: Server, *, pipeline: str | None = None, status: list[str] | None = None,
         trigger: str | None = None, before: int | None = None,
         limit: int = 50) -> dict[str, Any]:
    """A page of runs, newest first; ``next`` is the ``before`` of the following page."""
    limit = max(1, min(limit, 500))
    rows = listing.runs_page(server.store, pipeline=pipeline, status=status, trigger=trigger,
                             before=before, limit=limit)
    more = rows[-1]["seq"] if len(rows) == limit else None
    return {"runs": [run_doc(r) for r in rows], "next": more}


def run_row(server: Server, run_id: str) -> dict[str, Any]:
    row = listing.run_exact(server.store, run_id)
    if row is None:
        raise NotFoundError(f"no run {run_id!r} (see /api/runs)")
    return row


def run(server: Server, run_id: str) -> dict[str, Any]:
    """A run with every step attempt and the datasets it published."""
    row = run_row(server, run_id)
    steps = [REDACTOR.deep(jsonable({k: s.get(k) for k in STEP_KEYS}))
             for s in server.store.steps(row["id"])]
    versions = [{"dataset": v["dataset"], "version": v["version"],
                 "rows_added": v["rows_added"], "rows_total": v["rows_total"]}
                for v in server.store.versions_by_run(row["id"])]
    return {**run_doc(row), "steps": steps, "published": versions,
            "finished": row["status"] in ("succeeded", "failed", "cancelled"),
            "rejected_dataset": _rejected_name(server, row["pipeline"])}


def logs(server: Server, run_id: str, after: int = 0) -> list[dict[str, Any]]:
    row = run_row(server, run_id)
    return [{"id": r["id"], "ts": r["ts"].isoformat(), "level": r["level"],
             "step_id": r["step_id"], "message": REDACTOR(r["message"])}
            for r in server.store.logs(row["id"], after_id=after)]


def rejected_for_run(server: Server, run_id: str, offset: int = 0,
                     limit: int = 50) -> dict[str, Any]:
    """The rows a run rejected, with reasons (from ``<pipeline>__rejected``)."""
    from headwater.datasets.preview import preview_page

    row = run_row(server, run_id)
    name = _rejected_name(server, row["pipeline"])
    if name is None:
        return {"dataset": None, "columns": [], "rows": [], "offset": 0, "limit": limit,
                "total": 0}
    page = preview_page(_dataset(server, name), offset=offset, limit=limit,
                        run_id=row["id"])
    return REDACTOR.deep(page)  # type: ignore[no-any-return]


def _rejected_name(server: Server, pipeline: str) -> str | None:
    name = f"{pipeline}__rejected"
    try:
        server.store.dataset(name)
    except NotFoundError:
        return None
    return name


# --------------------------------------------------------------------------- datasets


def datasets(server: Server) -> list[dict[str, Any]]:
    from headwater.lineage.graph import is_stale

    code = server.store.code_versions()
    out = []
    for record in server.store.datasets():
        try:
            latest = server.store.version(record["name"])
        except NotFoundError:
            latest = None
        out.append({"name": record["name"], "pipeline": record["pipeline"],
                    "uri": record["uri"], "version": latest["version"] if latest else 0,
                    "rows": latest["rows_total"] if latest else 0,
                    "updated_at": jsonable(latest["created_at"]) if latest else None,
                    "stale": is_stale(latest, code) if latest else False})
    return out


def dataset(server: Server, name: str, version: int | None = None) -> dict[str, Any]:
    """A version: lineage facts, schema, column stats, drift; and the version list."""
    from headwater.lineage.graph import is_stale

    ds = _dataset(server, name)
    record = ds.record(version)
    stats = record.get("stats") or {}
    return REDACTOR.deep(jsonable({  # type: ignore[no-any-return]
        "name": name, "uri": ds.uri, "version": record["version"], "latest": ds.version,
        "run_id": record["run_id"], "pipeline": record["pipeline"],
        "code_version": record["code_version"], "trigger": record["trigger"],
        "mode": record["mode"], "created_at": record["created_at"],
        "stale": is_stale(record, server.store.code_versions()),
        "rows_added": record["rows_added"], "rows_removed": record["rows_removed"],
        "rows_total": record["rows_total"], "schema": record["schema"],
        "inputs": record["inputs"], "sources": record["sources"],
        "stats": {"columns": stats.get("columns", {}), "sampled_rows":
                  stats.get("sampled_rows")},
        "drift": record["drift"], "key": server.store.dataset(name).get("key") or [],
        "rejected_dataset": _rejected_name(server, record["pipeline"] or "")
        if record["pipeline"] else None,
    }))


def versions(server: Server, name: str, before: int | None = None,
             limit: int = 50) -> dict[str, Any]:
    server.store.dataset(name)
    limit = max(1, min(limit, 500))
    rows = listing.versions_page(server.store, name, before=before, limit=limit)
    keep = ("version", "run_id", "pipeline", "trigger", "mode", "rows_added", "rows_removed",
            "rows_total", "created_at", "code_version", "drift")
    return {"versions": [jsonable({k: r.get(k) for k in keep}) for r in rows],
            "next": rows[-1]["version"] if len(rows) == limit else None}


def preview(server: Server, name: str, version: int | None, offset: int,
            limit: int) -> dict[str, Any]:
    from headwater.datasets.preview import preview_page

    return preview_page(_dataset(server, name), version, offset=offset, limit=limit)


def diff(server: Server, name: str, a: int, b: int) -> dict[str, Any]:
    from headwater.datasets.diff import diff_versions

    return diff_versions(_dataset(server, name), a, b)


def rejected_for_version(server: Server, name: str, version: int | None, offset: int,
                         limit: int) -> dict[str, Any]:
    """Rows rejected by the run that made this version."""
    record = _dataset(server, name).record(version)
    if not record.get("run_id"):
        return {"dataset": None, "columns": [], "rows": [], "offset": 0, "limit": limit,
                "total": 0}
    return rejected_for_run(server, record["run_id"], offset, limit)


def lineage(server: Server, name: str, version: int | None = None) -> dict[str, Any]:
    """The version's lineage as nodes and edges (and the tree ``headwater lineage`` prints)."""
    from headwater.lineage.flat import to_graph

    tree = _dataset(server, name).lineage(version)
    graph = to_graph(tree)
    return REDACTOR.deep(jsonable({"dataset": name,  # type: ignore[no-any-return]
                                   "version": tree["node"]["version"], **graph}))


def _dataset(server: Server, name: str) -> Dataset:
    """A dataset handle; Arrow and Delta load with the first dataset page or call, not
    with the server (they were a fifth of ``serve``'s start before /api/health)."""
    from headwater.datasets.dataset import Dataset

    return Dataset(server.runtime, name)
