"""Drift between two dataset versions, from their ``column_stats`` documents alone.

Per column shared by both versions::

    {"psi": 0.03, "method": "exact", "null_rate_change": 0.002,
     "type_change": null,                              # or {"from": "BIGINT", "to": ...}
     "new_category_share": 0.0, "new_categories": []}  # categorical columns only

plus ``added`` and ``removed`` column names. The drift document is plain JSON.

**PSI** (population stability index, ``sum((q - p) * ln(q / p))`` over bins, shares floored
at 1e-4 so an empty bin does not divide by zero; < 0.1 is stable, > 0.2 is a real shift) is
measured on the *previous* version's bins:

* numeric columns on its decile histogram, with open outer bins; categorical ones on its
  top values plus an ``other`` bucket for everything else;
* ``method: exact`` when the current document was computed with ``reference=previous``
  (``column_stats`` then counted the new data in exactly those bins);
* ``method: estimated`` otherwise: numeric counts are interpolated from the current
  histogram (linear within each bin), categorical ones read from the current top values
  (a previous top value missing from them counts as zero). This lets any two versions be
  compared (``dataset diff A B``) at the price of some accuracy.

``new_category_share`` is the share of the current non-NULL values that the previous version
never had. It is only known when the previous top values were every value it had
(``top_complete``); otherwise it is null, since a value outside the top may be old or new.
This module does no I/O and must never import the engine, the server or the CLI.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any

from headwater.config.models import DriftConfig
from headwater.datasets.stats import as_text

EPSILON = 1e-4
"""Floor for a bin's share, the usual PSI smoothing."""


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """PSI between two distributions over the same bins, each given as counts."""
    p_total, q_total = sum(expected), sum(actual)
    if p_total <= 0 or q_total <= 0:
        raise ValueError("PSI needs at least one value on each side")
    total = 0.0
    for p_count, q_count in zip(expected, actual, strict=True):
        p = max(p_count / p_total, EPSILON)
        q = max(q_count / q_total, EPSILON)
        total += (q - p) * math.log(q / p)
    return total


# --------------------------------------------------------------------------- numeric


def _cdf_points(histogram: Mapping[str, Any]) -> list[tuple[float, float]]:
    """(edge, share of values <= edge) at each histogram edge, for interpolation."""
    edges, counts = histogram["edges"], histogram["counts"]
    total = sum(counts) or 1
    points, running = [(float(edges[0]), 0.0)], 0
    for edge, count in zip(edges[1:], counts, strict=False):
        running += count
        points.append((float(edge), running / total))
    return points


def _cdf(points: list[tuple[float, float]], x: float) -> float:
    xs = [p[0] for p in points]
    if x < xs[0]:
        return 0.0
    if x >= xs[-1]:
        return 1.0
    i = bisect_right(xs, x)
    (x0, f0), (x1, f1) = points[i - 1], points[i]
    return f0 + (f1 - f0) * (x - x0) / (x1 - x0)


def _estimated_counts(boundaries: list[float], current: Mapping[str, Any]) -> list[float]:
    """Shares of the current values in ``(-inf, b1], (b1, b2], ..., (bk, +inf)``."""
    points = _cdf_points(current["histogram"])
    cuts = [0.0, *(_cdf(points, b) for b in boundaries), 1.0]
    return [max(hi - lo, 0.0) for lo, hi in pairwise(cuts)]


def _numeric_psi(
    previous: Mapping[str, Any], current: Mapping[str, Any]
) -> tuple[float | None, str | None]:
    before, after = previous.get("histogram"), current.get("histogram")
    if not before or not after or not sum(before["counts"]) or not sum(after["counts"]):
        return None, None
    reference = current.get("reference")
    if reference and [float(e) for e in reference["edges"]] == [float(e) for e in before["edges"]]:
        return psi(before["counts"], reference["counts"]), "exact"
    boundaries = [float(e) for e in before["edges"][1:-1]]
    return psi(before["counts"], _estimated_counts(boundaries, current)), "estimated"


# --------------------------------------------------------------------------- categorical


def _current_counts(values: list[Any], current: Mapping[str, Any]) -> tuple[list[float], str]:
    """Current counts of the previous top ``values``: exact from ``reference`` if it
    counted exactly these values, else read from the current top values."""
    reference = current.get("reference")
    if reference and [as_text(v) for v in reference.get("values", [])] == [
        as_text(v) for v in values
    ]:
        return [float(n) for n in reference["counts"]], "exact"
    top = {as_text(item["value"]): item["count"] for item in current.get("top", [])}
    return [float(top.get(as_text(v), 0)) for v in values], "estimated"


def _categorical(previous: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    prev_n, cur_n = previous.get("count", 0), current.get("count", 0)
    result: dict[str, Any] = {"psi": None, "method": None}
    result.update(new_category_share=None, new_categories=[])
    if not prev_n or not cur_n:
        return result
    values = [item["value"] for item in previous.get("top", [])]
    before = [float(item["count"]) for item in previous.get("top", [])]
    after, method = _current_counts(values, current)
    # "other": everything outside the previous top values, on both sides.
    before.append(max(prev_n - sum(before), 0.0))
    after.append(max(cur_n - sum(after), 0.0))
    result.update(psi=psi(before, after), method=method)
    if previous.get("top_complete"):
        known = {as_text(v) for v in values}
        result["new_category_share"] = after[-1] / cur_n
        result["new_categories"] = [
            item["value"] for item in current.get("top", []) if as_text(item["value"]) not in known
        ]
    return result


# --------------------------------------------------------------------------- columns


def _column(previous: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {
        "psi": None,
        "method": None,
        "null_rate_change": current.get("null_rate", 0.0) - previous.get("null_rate", 0.0),
        "type_change": None,
    }
    if previous.get("type") != current.get("type"):
        result["type_change"] = {"from": previous.get("type"), "to": current.get("type")}
    kind = current.get("kind")
    if kind != previous.get("kind"):
        return result
    if kind == "numeric":
        result["psi"], result["method"] = _numeric_psi(previous, current)
    elif kind == "categorical":
        result.update(_categorical(previous, current))
    return result


def compute_drift(previous: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """Drift of ``current`` against ``previous`` (two ``column_stats`` documents)."""
    before = previous.get("columns", {})
    after = current.get("columns", {})
    return {
        "columns": {
            name: _column(before[name], doc) for name, doc in after.items() if name in before
        },
        "added": [name for name in after if name not in before],
        "removed": [name for name in before if name not in after],
    }


def exceeds(drift: Mapping[str, Any], config: DriftConfig) -> list[str]:
    """Columns whose PSI is above ``config.max_psi``, most drifted first."""
    over = [
        (name, column["psi"])
        for name, column in drift.get("columns", {}).items()
        if column.get("psi") is not None and column["psi"] > config.max_psi
    ]
    return [name for name, _ in sorted(over, key=lambda item: -item[1])]
