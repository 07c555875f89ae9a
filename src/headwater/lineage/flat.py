"""Lineage as nodes and edges: sources → source steps → pipeline runs → dataset versions.

:func:`~headwater.lineage.graph.version_lineage` answers with a tree (every path shown);
a drawing wants each thing once. This flattens the tree into unique nodes (``source``,
``step``, ``run``, ``dataset``) and directed edges, upstream and downstream alike. Read
only: it takes the tree and never touches the store.
"""

from __future__ import annotations

from typing import Any

Graph = dict[str, list[dict[str, Any]]]


class _Builder:
    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}
        self.edges: set[tuple[str, str]] = set()

    def node(self, node_id: str, kind: str, label: str, **extra: Any) -> str:
        self.nodes.setdefault(node_id, {"id": node_id, "kind": kind, "label": label, **extra})
        return node_id

    def edge(self, source: str, target: str) -> None:
        self.edges.add((source, target))

    def version(self, record: dict[str, Any], focus: bool = False) -> str:
        """A dataset version and what made it: its run, and the run's sources."""
        name, number = record["dataset"], record["version"]
        node = self.node(f"dataset:{name}@{number}", "dataset", f"{name}@{number}",
                         dataset=name, version=number, missing=bool(record.get("missing")),
                         stale=bool(record.get("stale")), rows=record.get("rows_total"),
                         focus=focus)
        if record.get("missing") or not record.get("run_id"):
            return node
        run = self.node(f"run:{record['run_id']}", "run",
                        f"{record.get('pipeline')} · {record['run_id']}",
                        pipeline=record.get("pipeline"), run_id=record["run_id"],
                        code_version=record.get("code_version"))
        self.edge(run, node)
        for source in record.get("sources") or []:
            if source.get("type") == "dataset":
                continue  # drawn as an input dataset version
            step = self.node(f"step:{record.get('pipeline')}.{source.get('step')}", "step",
                             f"{record.get('pipeline')}.{source.get('step')}")
            what = source.get("path") or source.get("table") or source.get("url") or ""
            src = self.node(f"source:{source.get('type')}:{what}", "source",
                            f"{source.get('type')} {what}".strip(),
                            files=len(source.get("files") or []))
            self.edge(src, step)
            self.edge(step, run)
        return node

    def up(self, record: dict[str, Any], node: str) -> None:
        run = f"run:{record['run_id']}" if record.get("run_id") else node
        for parent in record.get("upstream") or []:
            parent_node = self.version(parent)
            self.edge(parent_node, run)
            self.up(parent, parent_node)

    def down(self, record: dict[str, Any], node: str) -> None:
        for child in record.get("downstream") or []:
            child_node = self.version(child)
            if child.get("run_id"):
                self.edge(node, f"run:{child['run_id']}")
            self.down(child, child_node)


def to_graph(tree: dict[str, Any]) -> Graph:
    """``{"nodes": [...], "edges": [{"source", "target"}]}`` of a ``version_lineage`` tree."""
    builder = _Builder()
    root = builder.version(tree["node"], focus=True)
    builder.up({**tree["node"], "upstream": tree["upstream"]}, root)
    builder.down({"downstream": tree["downstream"]}, root)
    return {"nodes": list(builder.nodes.values()),
            "edges": [{"source": s, "target": t} for s, t in sorted(builder.edges)]}
