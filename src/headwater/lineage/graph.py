"""Lineage as a graph: which runs, code and sources made a dataset version, and what used it.

Built from the store's version records (each names its run, pipeline, code version,
trigger, input dataset versions and source fingerprints), walked upstream through input
datasets and downstream through the versions that read this one. A version is *stale*
when its pipeline's current code version differs from the one that produced it, or when
any input version it read is stale (staleness passes downstream, transitively). The
current code version is computed from the files on disk, so an edit makes versions stale
at once, before any run; a pipeline whose files do not load keeps the version its latest
run started with. This module only reads the store and the project's files.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from headwater.config.codeversion import code_version
from headwater.exceptions import HeadwaterError

if TYPE_CHECKING:
    from headwater.runtime import ProjectRuntime

MAX_DEPTH = 100
"""How far a walk goes; deeper nodes carry ``"truncated": true`` instead of their links.

A dataset that reads its own previous version makes a chain as long as its history."""

Key = tuple[str, int]


def current_code_versions(runtime: ProjectRuntime) -> dict[str, str]:
    """Each pipeline's code version as its files are now (or as last recorded by a run
    when they do not load)."""
    code = dict(runtime.store.code_versions())
    pipelines, _ = runtime.load_pipelines()  # fresh from disk, not the runtime's cache
    for name, pipeline in pipelines.items():
        code[name] = code_version(runtime.root, pipeline).hash
    return code


def is_stale_deep(runtime: ProjectRuntime, record: dict[str, Any]) -> bool:
    """Whether ``record``'s version is stale, itself or through any input it read."""
    return _Graph(runtime, current_code_versions(runtime)).stale(record)


def _node(record: dict[str, Any], stale: bool) -> dict[str, Any]:
    return {
        "dataset": record["dataset"],
        "version": record["version"],
        "run_id": record.get("run_id"),
        "pipeline": record.get("pipeline"),
        "code_version": record.get("code_version"),
        "stale": stale,
        "trigger": record.get("trigger"),
        "created_at": record["created_at"].isoformat() if record.get("created_at") else None,
        "rows_added": record.get("rows_added"),
        "rows_total": record.get("rows_total"),
        "inputs": record.get("inputs") or [],
        "sources": record.get("sources") or [],
    }


def is_stale(record: Mapping[str, Any], current_code: Mapping[str, str]) -> bool:
    """Whether the pipeline that made ``record`` has different code now (this version
    alone; :func:`is_stale_deep` follows its inputs too)."""
    pipeline = record.get("pipeline")
    code = record.get("code_version")
    return bool(pipeline and code and current_code.get(pipeline) not in (None, code))


def version_lineage(runtime: ProjectRuntime, dataset: str,
                    version: int | None = None) -> dict[str, Any]:
    """``{"node", "upstream": [...], "downstream": [...]}`` for one dataset version.

    Every path is shown: a version reached along two paths (a diamond) appears under both.
    """
    store = runtime.store
    graph = _Graph(runtime, current_code_versions(runtime))
    record = store.version(dataset, version)
    key = (str(record["dataset"]), int(record["version"]))
    root = _node(record, graph.stale(record))
    return {"node": root, "upstream": graph.up(root["inputs"], 1),
            "downstream": graph.down(key, 1)}


class _Graph:
    """The store's version records, read once per walk, and the subtrees built from them."""

    def __init__(self, runtime: ProjectRuntime, code: dict[str, str]) -> None:
        self.runtime = runtime
        self.code = code
        self._records: dict[Key, dict[str, Any] | None] = {}
        self._readers: dict[Key, list[dict[str, Any]]] | None = None
        self._up: dict[Key, dict[str, Any]] = {}
        self._down: dict[Key, dict[str, Any]] = {}
        self._stale: dict[Key, bool] = {}

    def stale(self, record: dict[str, Any]) -> bool:
        """Own code changed, or any input version (transitively) is stale.

        Walked with an explicit stack: a dataset reading its own previous version makes a
        chain as long as its history, too deep for recursion.
        """
        key = (str(record["dataset"]), int(record["version"]))
        self._records.setdefault(key, record)
        stack, queued = [key], {key}
        while stack:
            top = stack[-1]
            if top in self._stale:
                stack.pop()
                continue
            current = self._record(top)
            if current is None:  # a dropped input: it cannot make anything stale
                self._stale[top] = False
                stack.pop()
                continue
            inputs = [k for k in map(_key, current.get("inputs") or []) if k is not None]
            pending = [k for k in inputs if k not in self._stale and k not in queued]
            if pending:
                stack.extend(pending)
                queued.update(pending)
                continue
            self._stale[top] = is_stale(current, self.code) or any(
                self._stale.get(k, False) for k in inputs)
            stack.pop()
        return self._stale[key]

    def up(self, inputs: list[dict[str, Any]], depth: int) -> list[dict[str, Any]]:
        out = []
        for item in inputs:
            key = _key(item)
            if key is None:
                continue
            if key not in self._up:
                record = self._record(key)
                if record is None:  # a dropped upstream dataset is shown as missing
                    self._up[key] = {"dataset": key[0], "version": key[1], "missing": True}
                    out.append(self._up[key])
                    continue
                parent = _node(record, self.stale(record))
                if depth >= MAX_DEPTH:  # not remembered: a shorter path may reach it too
                    out.append({**parent, "upstream": [], "truncated": True})
                    continue
                parent["upstream"] = self.up(parent["inputs"], depth + 1)
                self._up[key] = parent
            out.append(self._up[key])
        return out

    def down(self, key: Key, depth: int) -> list[dict[str, Any]]:
        out = []
        for record in self._readers_of(key):
            child_key = (str(record["dataset"]), int(record["version"]))
            if child_key not in self._down:
                child = _node(record, self.stale(record))
                if depth >= MAX_DEPTH:
                    out.append({**child, "downstream": [], "truncated": True})
                    continue
                child["downstream"] = self.down(child_key, depth + 1)
                self._down[child_key] = child
            out.append(self._down[child_key])
        return out

    def _record(self, key: Key) -> dict[str, Any] | None:
        if key not in self._records:
            try:
                self._records[key] = self.runtime.store.version(*key)
            except HeadwaterError:
                self._records[key] = None
        return self._records[key]

    def _readers_of(self, key: Key) -> list[dict[str, Any]]:
        """Versions that recorded ``key`` as an input (every record is read only once)."""
        if self._readers is None:
            self._readers = {}
            store = self.runtime.store
            for other in store.datasets():
                for record in store.versions(other["name"]):
                    for item in record.get("inputs") or []:
                        parent = _key(item)
                        if parent is None:
                            continue
                        readers = self._readers.setdefault(parent, [])
                        if all(r is not record for r in readers):  # listed twice
                            readers.append(record)
        return self._readers.get(key, [])


def _key(item: Mapping[str, Any]) -> Key | None:
    if item.get("dataset") is None or item.get("version") is None:
        return None
    return str(item["dataset"]), int(item["version"])
