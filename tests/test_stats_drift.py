"""Column statistics and the drift computed from them, on real DuckDB relations."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from headwater.config.models import DriftConfig
from headwater.datasets.drift import compute_drift, exceeds, psi
from headwater.datasets.stats import FULL_COUNT_LIMIT, column_stats


@pytest.fixture
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    yield connection
    connection.close()


def normal(mean: float, rows: int = 50_000, seed: int = 1) -> str:
    """A relation of normally distributed ``x`` (Box-Muller over a seeded hash), repeatable."""
    u = f"((hash(range + {seed}) % 1000003) + 1) / 1000004.0"
    v = f"((hash(range * 7 + {seed}) % 999983) + 1) / 999984.0"
    return f"SELECT {mean} + 10 * sqrt(-2 * ln({u})) * cos(2 * pi() * {v}) AS x FROM range({rows})"


def countries(shares: dict[str, int]) -> str:
    """A relation of ``country`` with the given number of rows per value."""
    parts = [f"SELECT '{value}' AS country FROM range({n})" for value, n in shares.items()]
    return " UNION ALL ".join(parts)


# --------------------------------------------------------------------------- stats


def test_numeric_column_statistics(con: duckdb.DuckDBPyConnection) -> None:
    """1..1000: exact count, mean, min, max, median, and ten decile bins of 100 each."""
    stats = column_stats(con, "SELECT range + 1 AS n FROM range(1000)")
    n = stats["columns"]["n"]

    assert 1000 == stats["rows"]
    assert ("BIGINT", "numeric", 1000, 0, 0.0) == (
        n["type"],
        n["kind"],
        n["count"],
        n["nulls"],
        n["null_rate"],
    )
    assert (1, 1000, 500.5) == (n["min"], n["max"], n["mean"])
    assert 288.8194 == pytest.approx(n["std"], abs=1e-3)
    assert ["p01", "p05", "p25", "p50", "p75", "p95", "p99"] == list(n["quantiles"])
    assert 500.5 == pytest.approx(n["quantiles"]["p50"])
    assert 1000 == pytest.approx(n["distinct"], rel=0.05)
    assert [100] * 10 == n["histogram"]["counts"]
    assert 11 == len(n["histogram"]["edges"])
    assert (1.0, 1000.0) == (n["histogram"]["edges"][0], n["histogram"]["edges"][-1])


def test_nulls_are_counted_and_rated(con: duckdb.DuckDBPyConnection) -> None:
    """count is the non-NULL values, nulls the rest, null_rate their share of the rows."""
    stats = column_stats(
        con, "SELECT CASE WHEN range % 4 = 0 THEN NULL ELSE range END AS n FROM range(100)"
    )
    n = stats["columns"]["n"]

    assert (75, 25, 0.25) == (n["count"], n["nulls"], n["null_rate"])
    assert 75 == sum(n["histogram"]["counts"])


def test_categorical_top_values_are_exact_and_complete(con: duckdb.DuckDBPyConnection) -> None:
    """A short text column lists every value with its exact count, most frequent first."""
    stats = column_stats(con, countries({"DE": 50, "FR": 30, "US": 20}))
    country = stats["columns"]["country"]

    assert "categorical" == country["kind"]
    assert [
        {"value": "DE", "count": 50},
        {"value": "FR", "count": 30},
        {"value": "US", "count": 20},
    ] == country["top"]
    assert True is country["top_complete"]
    assert ("DE", "US") == (country["min"], country["max"])


def test_booleans_are_categorical_with_native_values(con: duckdb.DuckDBPyConnection) -> None:
    """Booleans keep JSON booleans as values."""
    stats = column_stats(con, "SELECT range % 3 = 0 AS flag FROM range(9)")

    assert [{"value": False, "count": 6}, {"value": True, "count": 3}] == stats["columns"]["flag"][
        "top"
    ]


def test_a_long_categorical_column_gets_exact_top_values(con: duckdb.DuckDBPyConnection) -> None:
    """Past FULL_COUNT_LIMIT distinct values, the 20 most frequent are still exact."""
    relation = (
        f"SELECT 'id' || range AS code FROM range({FULL_COUNT_LIMIT * 5}) "
        f"UNION ALL SELECT 'hot' FROM range(40) UNION ALL SELECT 'warm' FROM range(30)"
    )
    code = column_stats(con, relation)["columns"]["code"]

    assert [{"value": "hot", "count": 40}, {"value": "warm", "count": 30}] == code["top"][:2]
    assert 20 == len(code["top"])
    assert False is code["top_complete"]


def test_temporal_columns_are_iso_strings_and_the_document_is_strict_json(
    con: duckdb.DuckDBPyConnection,
) -> None:
    """Dates and timestamps become ISO strings; NaN and infinities never reach the JSON."""
    relation = """SELECT * FROM (VALUES
        (DATE '2024-01-01', TIMESTAMP '2024-01-01 10:00:00', 1.5::DOUBLE, 2.25::DECIMAL(5,2)),
        (DATE '2024-03-01', TIMESTAMP '2024-01-02 11:30:00', 'nan'::DOUBLE, 1.00::DECIMAL(5,2)),
        (DATE '2024-02-01', NULL, 'inf'::DOUBLE, NULL)
    ) AS t(day, at_ts, ratio, price)"""
    stats = column_stats(con, relation)
    cols = stats["columns"]

    assert ("2024-01-01", "2024-03-01") == (cols["day"]["min"], cols["day"]["max"])
    assert "2024-01-02T11:30:00" == cols["at_ts"]["max"]
    assert "temporal" == cols["day"]["kind"]
    assert (3, 1.5, 1.5, 1.5) == (
        cols["ratio"]["count"],
        cols["ratio"]["min"],
        cols["ratio"]["max"],
        cols["ratio"]["mean"],
    )
    assert (1.0, 2.25) == (cols["price"]["min"], cols["price"]["max"])
    assert stats == json.loads(json.dumps(stats, allow_nan=False))


def test_an_empty_relation(con: duckdb.DuckDBPyConnection) -> None:
    """No rows: zero counts, no histogram or top values, still valid JSON."""
    stats = column_stats(con, "SELECT 1 AS n, 'a' AS s WHERE false")

    assert 0 == stats["rows"]
    assert (0, 0, 0.0) == (
        stats["columns"]["n"]["count"],
        stats["columns"]["n"]["nulls"],
        stats["columns"]["n"]["null_rate"],
    )
    assert "histogram" not in stats["columns"]["n"]
    assert "top" not in stats["columns"]["s"]
    json.dumps(stats, allow_nan=False)


def test_a_constant_column_has_one_populated_bin(con: duckdb.DuckDBPyConnection) -> None:
    """Every value the same: every decile is that value, so all rows sit in the first bin."""
    n = column_stats(con, "SELECT 5 AS n FROM range(10)")["columns"]["n"]

    assert {"edges": [5.0, 5.0, 5.0], "counts": [10, 0]} == n["histogram"]


@pytest.mark.slow
def test_two_million_rows_by_twelve_columns(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """2M rows by 12 columns (numbers, text, a unique hash, dates) in bounded memory, with
    exact counts (speed is measured in bench/datasets_ml.py, not here)."""
    data = tmp_path / "wide.parquet"
    con.execute(
        f"""COPY (SELECT range AS id, (hash(range) % 10000) / 100.0 AS amount,
            (hash(range * 3) % 50)::INTEGER AS qty, ['DE','FR','US','IT'][range % 4 + 1] AS country,
            md5(range::VARCHAR) AS digest, TIMESTAMP '2024-01-01' + INTERVAL (range) SECOND AS ts,
            DATE '2024-01-01' + (range % 365)::INTEGER AS day, range % 2 = 0 AS flag,
            (range % 1000)::DECIMAL(10,2) AS price,
            CASE WHEN range % 10 = 0 THEN NULL ELSE (hash(range) % 997) / 997.0 END AS maybe,
            'cat' || (range % 50)::VARCHAR AS cat50, (hash(range * 7) % 1000000) AS big
            FROM range(2000000)) TO '{data}' (FORMAT parquet)"""
    )
    relation = f"SELECT * FROM read_parquet('{data}')"

    stats = column_stats(con, relation)

    assert 12 == len(stats["columns"])
    assert 2_000_000 == stats["rows"]
    assert 200_000 == stats["columns"]["maybe"]["nulls"]


# --------------------------------------------------------------------------- drift


def test_psi_of_identical_distributions_is_zero() -> None:
    """PSI is zero for the same shares, whatever the totals, and grows with the shift."""
    assert 0.0 == psi([10, 20, 70], [100, 200, 700])
    assert psi([50, 50], [60, 40]) < psi([50, 50], [90, 10])


def test_identical_data_has_no_drift(con: duckdb.DuckDBPyConnection) -> None:
    """The same data again: PSI is exactly 0 when binned against the previous version, and
    about 0 when estimated from the two histograms alone."""
    relation = f"SELECT x, CASE WHEN x > 0 THEN 'pos' ELSE 'neg' END AS sign FROM ({normal(0)})"
    before = column_stats(con, relation)
    again = column_stats(con, relation, reference=before)

    exact = compute_drift(before, again)
    estimated = compute_drift(before, column_stats(con, relation))

    assert ("exact", 0.0) == (exact["columns"]["x"]["method"], exact["columns"]["x"]["psi"])
    assert 0.0 == exact["columns"]["sign"]["psi"]
    assert "estimated" == estimated["columns"]["x"]["method"]
    assert estimated["columns"]["x"]["psi"] < 0.01
    assert ([], [], []) == (exceeds(exact, DriftConfig()), exact["added"], exact["removed"])


def test_a_shifted_distribution_drifts(con: duckdb.DuckDBPyConnection) -> None:
    """Moving the mean by one standard deviation is a real shift: PSI > 0.2, both ways of
    computing it agree, and exceeds() names the column."""
    before = column_stats(con, normal(0))
    after_sql = normal(10, seed=2)

    exact = compute_drift(before, column_stats(con, after_sql, reference=before))
    estimated = compute_drift(before, column_stats(con, after_sql))

    assert exact["columns"]["x"]["psi"] > 0.2
    assert estimated["columns"]["x"]["psi"] == pytest.approx(exact["columns"]["x"]["psi"], rel=0.2)
    assert ["x"] == exceeds(exact, DriftConfig(max_psi=0.2))
    assert [] == exceeds(exact, DriftConfig(max_psi=50))


def test_a_small_shift_stays_below_the_threshold(con: duckdb.DuckDBPyConnection) -> None:
    """A fresh sample of the same distribution (different seed) is stable: PSI < 0.1."""
    before = column_stats(con, normal(0))
    after = column_stats(con, normal(0, seed=9), reference=before)

    assert compute_drift(before, after)["columns"]["x"]["psi"] < 0.1


def test_new_categories_are_measured(con: duckdb.DuckDBPyConnection) -> None:
    """A quarter of the new rows in a country never seen before: share 0.25, named, and a
    PSI well over the threshold."""
    before = column_stats(con, countries({"DE": 300, "FR": 300, "US": 300}))
    after_sql = countries({"DE": 250, "FR": 250, "US": 250, "XX": 250})

    for current in (column_stats(con, after_sql, reference=before), column_stats(con, after_sql)):
        drift = compute_drift(before, current)["columns"]["country"]
        assert 0.25 == drift["new_category_share"]
        assert ["XX"] == drift["new_categories"]
        assert drift["psi"] > 0.2


def test_new_category_share_is_unknown_after_an_incomplete_top(
    con: duckdb.DuckDBPyConnection,
) -> None:
    """When the previous top values were not every value, "new" cannot be told from "rare"."""
    relation = "SELECT 'v' || (range % 30) AS code FROM range(300)"
    before = column_stats(con, relation)
    drift = compute_drift(before, column_stats(con, relation, reference=before))

    assert (None, 0.0) == (
        drift["columns"]["code"]["new_category_share"],
        drift["columns"]["code"]["psi"],
    )


def test_columns_added_removed_retyped_and_null_rates(con: duckdb.DuckDBPyConnection) -> None:
    """Schema changes are listed; a column that changed kind has no PSI but its type change."""
    before = column_stats(con, "SELECT range AS id, range AS gone, 1 AS n FROM range(10)")
    after = column_stats(
        con,
        "SELECT range::VARCHAR AS id, 'x' AS fresh, "
        "CASE WHEN range < 5 THEN NULL ELSE 1 END AS n FROM range(10)",
        reference=before,
    )
    drift = compute_drift(before, after)

    assert (["fresh"], ["gone"]) == (drift["added"], drift["removed"])
    assert {"from": "BIGINT", "to": "VARCHAR"} == drift["columns"]["id"]["type_change"]
    assert None is drift["columns"]["id"]["psi"]
    assert 0.5 == drift["columns"]["n"]["null_rate_change"]
    assert drift == json.loads(json.dumps(drift, allow_nan=False))


def _drifted(drift: dict[str, Any]) -> list[float]:
    return [
        c["psi"]
        for c in drift["columns"].values()
        if c["psi"] is not None and not math.isnan(c["psi"])
    ]


def test_an_all_null_column_has_no_psi(con: duckdb.DuckDBPyConnection) -> None:
    """No values on one side: PSI is undefined (None), not an error."""
    before = column_stats(con, "SELECT range AS n FROM range(10)")
    after = column_stats(con, "SELECT NULL::BIGINT AS n FROM range(10)", reference=before)

    assert [] == _drifted(compute_drift(before, after))
