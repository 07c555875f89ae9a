"""A layered left-to-right layout for DAGs drawn as SVG (pipeline steps, lineage).

Each node's column is its longest path from a root, rows are filled in input order; that
is enough for the graphs headwater draws and costs O(nodes + edges), so 2,000 lineage nodes
lay out in milliseconds and the browser only paints rectangles. Pure functions.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

NODE_W, NODE_H, GAP_X, GAP_Y, PAD = 170, 40, 44, 16, 10


def layout(nodes: list[dict[str, Any]], edges: list[dict[str, Any]]) -> dict[str, Any]:
    """Nodes with ``x``, ``y``; edges with an SVG ``path``; the drawing's ``width``/``height``."""
    ids = [n["id"] for n in nodes]
    parents: dict[str, list[str]] = defaultdict(list)
    for edge in edges:
        parents[edge["target"]].append(edge["source"])
    column = _columns(ids, parents)
    rows: dict[int, int] = defaultdict(int)
    placed = []
    for node in nodes:
        col = column[node["id"]]
        x = PAD + col * (NODE_W + GAP_X)
        y = PAD + rows[col] * (NODE_H + GAP_Y)
        rows[col] += 1
        placed.append({**node, "x": x, "y": y})
    where = {n["id"]: n for n in placed}
    paths = []
    for edge in edges:
        a, b = where.get(edge["source"]), where.get(edge["target"])
        if a is None or b is None:
            continue
        x1, y1 = a["x"] + NODE_W, a["y"] + NODE_H / 2
        x2, y2 = b["x"], b["y"] + NODE_H / 2
        mid = (x1 + x2) / 2
        paths.append({**edge, "path": f"M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}"})
    width = PAD * 2 + (max(column.values(), default=0) + 1) * (NODE_W + GAP_X)
    height = PAD * 2 + max(rows.values(), default=1) * (NODE_H + GAP_Y)
    return {"nodes": placed, "edges": paths, "width": width, "height": height,
            "node_w": NODE_W, "node_h": NODE_H}


def _columns(ids: list[str], parents: dict[str, list[str]]) -> dict[str, int]:
    """Longest distance from a root, iteratively (deep graphs must not hit recursion limits)."""
    column: dict[str, int] = {}
    known = set(ids)
    for start in ids:
        stack = [(start, False)]
        visiting: set[str] = set()
        while stack:
            node, ready = stack.pop()
            if node in column:
                continue
            ups = [p for p in parents.get(node, []) if p in known]
            if ready:
                visiting.discard(node)
                column[node] = 1 + max((column.get(p, 0) for p in ups), default=-1)
                continue
            visiting.add(node)
            stack.append((node, True))
            stack.extend((p, False) for p in ups if p not in column and p not in visiting)
    return column
