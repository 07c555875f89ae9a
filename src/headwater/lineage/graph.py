"""Lineage as a graph: which runs, code and sources made a dataset version, and what used it.

Built from the store's version records (each names its run, pipeline, code version,
trigger, input dataset versions and source fingerprints), walked upstream through input
datasets and downstream through the versions that read this one. A version is *stale*
when its pipeline's current code version differs from the one that produced it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from headwater.runtime import ProjectRuntime


def _node(record: dict[str, Any], current_code: dict[str, str]) -> dict[str, Any]:
    pipeline = record.get("pipeline")
    code = record.get("code_version")
    return {
        "dataset": record["dataset"],
        "version": record["version"],
        "run_id": record.get("run_id"),
        "pipeline": pipeline,
        "code_version": code,
        "stale": bool(pipeline and code and current_code.get(pipeline) not in (None, code)),
        "trigger": record.get("trigger"),
        "created_at": record["created_at"].isoformat() if record.get("created_at") else None,
        "rows_added": record.get("rows_added"),
        "rows_total": record.get("rows_total"),
        "inputs": record.get("inputs") or [],
        "sources": record.get("sources") or [],
    }


def version_lineage(runtime: ProjectRuntime, dataset: str,
                    version: int | None = None) -> dict[str, Any]:
    """``{"node", "upstream": [...], "downstream": [...]}`` for one dataset version."""
    store = runtime.store
    current_code = store.code_versions()
    record = store.version(dataset, version)
    root = _node(record, current_code)
    upstream = _walk_up(runtime, root, current_code, seen=set())
    downstream = _walk_down(runtime, dataset, int(record["version"]), current_code, set())
    return {"node": root, "upstream": upstream, "downstream": downstream}


def _walk_up(runtime: ProjectRuntime, node: dict[str, Any], code: dict[str, str],
             seen: set[tuple[str, int]]) -> list[dict[str, Any]]:
    out = []
    for item in node["inputs"]:
        key = (str(item["dataset"]), int(item["version"]))
        if key in seen:
            continue
        seen.add(key)
        try:
            parent = _node(runtime.store.version(*key), code)
        except Exception:  # noqa: BLE001 - a dropped upstream dataset is shown as missing
            out.append({"dataset": key[0], "version": key[1], "missing": True})
            continue
        parent["upstream"] = _walk_up(runtime, parent, code, seen)
        out.append(parent)
    return out


def _walk_down(runtime: ProjectRuntime, dataset: str, version: int, code: dict[str, str],
               seen: set[tuple[str, int]]) -> list[dict[str, Any]]:
    out = []
    for other in runtime.store.datasets():
        for record in runtime.store.versions(other["name"]):
            for item in record.get("inputs") or []:
                if item.get("dataset") == dataset and int(item.get("version", -1)) == version:
                    key = (str(record["dataset"]), int(record["version"]))
                    if key in seen:
                        continue
                    seen.add(key)
                    child = _node(record, code)
                    child["downstream"] = _walk_down(runtime, *key, code, seen)
                    out.append(child)
    return out
