"""Rendering of dataset and lineage documents for the terminal (or as JSON)."""

from __future__ import annotations

import sys
from typing import Any

from headwater.cli.output import print_json


def _console() -> Any:
    from rich.console import Console

    return Console()


def show_dataset(project: Any, name: str, version: int | None, as_json: bool) -> None:
    from headwater.lineage.graph import is_stale_deep

    ds = project.dataset(name)
    record = ds.record(version)
    stale = is_stale_deep(project.runtime, record)  # its own code, or any input's
    doc = {
        "name": name, "uri": ds.uri, "version": record["version"],
        "versions": ds.versions(), "run_id": record["run_id"], "pipeline": record["pipeline"],
        "code_version": record["code_version"], "stale": stale,
        "trigger": record["trigger"], "mode": record["mode"],
        "created_at": record["created_at"].isoformat(),
        "rows_added": record["rows_added"], "rows_removed": record["rows_removed"],
        "rows_total": record["rows_total"], "schema": record["schema"],
        "inputs": record["inputs"], "sources": record["sources"],
        "stats": record["stats"], "drift": record["drift"], "notes": record["notes"],
    }
    if as_json:
        print_json(doc)
        return
    from rich.table import Table

    console = _console()
    note = " [yellow](stale: its pipeline's code has changed)[/yellow]" if stale else ""
    console.print(f"[bold]{name}[/bold] version {doc['version']} of {doc['versions'][-1]}"
                  f"{note}")
    console.print(f"  uri       {ds.uri}")
    console.print(f"  made by   run {doc['run_id']} of {doc['pipeline']} "
                  f"(code {doc['code_version']}, trigger {doc['trigger']})")
    console.print(f"  rows      {doc['rows_total']} total, +{doc['rows_added']} "
                  f"-{doc['rows_removed']} ({doc['mode']})")
    for source in doc["sources"]:
        files = source.get("files")
        what = f"{len(files)} files" if files is not None else source.get("dataset", "")
        console.print(f"  source    {source.get('step')}: {source.get('type')} {what}")
    stats = doc["stats"] or {}
    columns = stats.get("columns", stats) if isinstance(stats, dict) else {}
    table = Table("column", "type", "nulls", "distinct", "min", "max", "mean", "psi")
    drift = (doc["drift"] or {}).get("columns", {}) if isinstance(doc["drift"], dict) else {}
    for col in doc["schema"]:
        s = columns.get(col["name"], {}) if isinstance(columns, dict) else {}
        d = drift.get(col["name"], {}) if isinstance(drift, dict) else {}
        table.add_row(col["name"], col["type"], _fmt(s.get("nulls")), _fmt(s.get("distinct")),
                      _fmt(s.get("min")), _fmt(s.get("max")), _fmt(s.get("mean")),
                      _fmt(d.get("psi") if isinstance(d, dict) else None))
    console.print(table)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 24 else text[:21] + "..."


def preview_dataset(project: Any, name: str, version: int | None, n: int,
                    as_json: bool) -> None:
    table = project.dataset(name).to_arrow(version).slice(0, n)
    if as_json:
        print_json(table.to_pylist())
        return
    from rich.table import Table

    out = Table(*table.column_names)
    for row in table.to_pylist():
        out.add_row(*[_fmt(v) for v in row.values()])
    _console().print(out)


def diff_dataset(project: Any, name: str, a: int, b: int, as_json: bool) -> None:
    from headwater.datasets.diff import diff_versions

    doc = diff_versions(project.dataset(name), a, b)
    if as_json:
        print_json(doc)
        return
    sys.stdout.write(f"{name} {a} → {b}: +{doc['added']} added, -{doc['removed']} removed, "
                     f"~{doc['changed']} changed\n")
    for change in doc["schema_changes"]:
        sys.stdout.write(f"  schema: {change}\n")


def show_lineage(project: Any, name: str, version: int | None, as_json: bool) -> None:
    graph = project.dataset(name).lineage(version)
    if as_json:
        print_json(graph)
        return
    from rich.tree import Tree

    node = graph["node"]
    tree = Tree(_label(node))
    up = tree.add("[bold]upstream[/bold]")
    _sources(up, node)
    _add(up, graph["upstream"], "upstream")
    down = tree.add("[bold]downstream[/bold]")
    _add(down, graph["downstream"], "downstream")
    _console().print(tree)


def _label(node: dict[str, Any]) -> str:
    if node.get("missing"):
        return f"{node['dataset']}@{node['version']} (missing)"
    stale = " [yellow]stale[/yellow]" if node.get("stale") else ""
    return (f"[bold]{node['dataset']}@{node['version']}[/bold] ← run {node['run_id']} of "
            f"{node['pipeline']} (code {node['code_version']}, {node['trigger']}){stale}")


def _sources(tree: Any, node: dict[str, Any]) -> None:
    for source in node.get("sources", []):
        if source.get("type") == "files":
            branch = tree.add(f"files via step {source.get('step')}: {source.get('path')}")
            for f in source.get("files", [])[:20]:
                branch.add(f"{f.get('path')} (size {f.get('size')}, etag {f.get('etag')})")
            extra = len(source.get("files", [])) - 20
            if extra > 0:
                branch.add(f"... {extra} more")
        elif source.get("type") != "dataset":
            tree.add(f"{source.get('type')} via step {source.get('step')}")


def _add(tree: Any, nodes: list[dict[str, Any]], direction: str) -> None:
    for node in nodes:
        branch = tree.add(_label(node))
        if direction == "upstream":
            _sources(branch, node)
        _add(branch, node.get(direction, []), direction)
