"""``headwater plan`` and ``headwater deploy``: what a deploy would change, and doing it.

The comparison is between the project on disk (with the chosen environment's overlay)
and what the last deploy recorded in that environment's store: pipelines added or
removed, code versions changed (naming the files whose meaning changed), and triggers
added, removed or changed. ``deploy`` records the current state; servers on that store
see the new deployment and reload their pipelines without a restart. The CLI only
renders these results. Never import the server or the CLI from here.
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
    trigger_changed."""
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
    return changes


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
