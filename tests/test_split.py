"""Deterministic splits: a key's split depends on the key and the seed, nothing else."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.config.models import SplitConfig
from headwater.datasets.split import add_split, split_expression
from headwater.exceptions import ConfigError


@pytest.fixture
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    yield connection
    connection.close()


def splits_of(con: duckdb.DuckDBPyConnection, keys: list[str], config: SplitConfig) -> list[str]:
    """The split of each key, in order, computed in one query over all of them."""
    query = (
        f"SELECT {split_expression(config)} FROM "
        f"(SELECT unnest(?::VARCHAR[]) AS {config.by}, generate_subscripts(?::VARCHAR[], 1) AS i) "
        f"ORDER BY i"
    )
    return [row[0] for row in con.execute(query, [keys, keys]).fetchall()]


def reference_split(key: str, config: SplitConfig) -> str:
    """The documented formula, outside DuckDB: what makes the split stable across versions."""
    digest = hashlib.md5(f"{config.seed}\x1f{key}".encode()).hexdigest()
    fraction = int(digest[:13], 16) / 2**52
    if fraction < config.train:
        return "train"
    if fraction < config.train + config.validation:
        return "validation"
    return "test"


def test_the_same_key_gets_the_same_split_on_every_call(con: duckdb.DuckDBPyConnection) -> None:
    """Two calls, on two connections, assign every key identically."""
    config = SplitConfig(by="customer_id", seed=3)
    keys = [f"c{i}" for i in range(1000)]
    other = duckdb.connect()

    assert splits_of(con, keys, config) == splits_of(other, keys, config)


def test_splits_match_the_documented_md5_formula(con: duckdb.DuckDBPyConnection) -> None:
    """DuckDB's split equals the formula computed with hashlib, so a DuckDB upgrade (or any
    other tool) reproduces it."""
    config = SplitConfig(by="k", train=0.5, validation=0.25, test=0.25, seed=11)
    keys = [str(i) for i in range(2000)]

    assert [reference_split(k, config) for k in keys] == splits_of(con, keys, config)


def test_pinned_assignments_never_change(con: duckdb.DuckDBPyConnection) -> None:
    """A golden sample: if this fails, every published dataset's splits would move."""
    config = SplitConfig(by="k", seed=0)
    keys = ["1", "3", "8", "alice"]

    assert ["train", "test", "validation", "train"] == splits_of(con, keys, config)


def test_proportions_follow_the_ratios_on_100k_keys(con: duckdb.DuckDBPyConnection) -> None:
    """On 100,000 keys each split's share is within half a percentage point of its ratio."""
    config = SplitConfig(by="id", train=0.7, validation=0.2, test=0.1, seed=5)
    relation = add_split("SELECT range AS id FROM range(100000)", config)
    rows = con.sql(f"SELECT _split, count(*) / 100000 FROM ({relation}) GROUP BY ALL").fetchall()
    shares = dict(rows)

    assert {"train", "validation", "test"} == set(shares)
    assert 0.7 == pytest.approx(shares["train"], abs=0.005)
    assert 0.2 == pytest.approx(shares["validation"], abs=0.005)
    assert 0.1 == pytest.approx(shares["test"], abs=0.005)


def test_ratios_must_add_up_to_one() -> None:
    """0.8 + 0.1 + 0.2 is refused with the sum spelled out."""
    config = SplitConfig(by="k", train=0.8, validation=0.1, test=0.2)

    with pytest.raises(ConfigError) as caught:
        split_expression(config)

    expected = "split ratios must add up to 1, but train 0.8 + validation 0.1 + test 0.2 = 1.1"
    assert expected == str(caught.value)


def test_a_null_key_goes_to_train(con: duckdb.DuckDBPyConnection) -> None:
    """A NULL key has nothing stable to hash; it is always training data."""
    config = SplitConfig(by="k", train=0.0, validation=0.5, test=0.5)

    assert [("train",)] == con.sql(
        f"SELECT {split_expression(config)} FROM (SELECT NULL AS k)"
    ).fetchall()


def test_a_zero_ratio_split_is_never_produced(con: duckdb.DuckDBPyConnection) -> None:
    """validation: 0 means no validation rows at all, not a rounding error's worth."""
    config = SplitConfig(by="id", train=0.9, validation=0.0, test=0.1)
    rows = con.sql(
        f"SELECT DISTINCT _split FROM ({add_split('SELECT range AS id FROM range(20000)', config)})"
    ).fetchall()

    assert {"train", "test"} == {row[0] for row in rows}


def test_integer_and_text_keys_agree(con: duckdb.DuckDBPyConnection) -> None:
    """A key column that changes from text to integer keeps every key in its split."""
    config = SplitConfig(by="k")
    as_int = con.sql(f"SELECT {split_expression(config)} FROM (SELECT range AS k FROM range(500))")
    as_text = con.sql(
        f"SELECT {split_expression(config)} FROM (SELECT range::VARCHAR AS k FROM range(500))"
    )

    assert as_int.fetchall() == as_text.fetchall()


def test_the_seed_reshuffles(con: duckdb.DuckDBPyConnection) -> None:
    """A different seed is a different, equally stable, assignment."""
    keys = [str(i) for i in range(1000)]

    assert splits_of(con, keys, SplitConfig(by="k", seed=1)) != splits_of(
        con, keys, SplitConfig(by="k", seed=2)
    )


def test_a_composite_key_uses_every_column(con: duckdb.DuckDBPyConnection) -> None:
    """by: "a, b" hashes both columns: (1, 2) and (2, 1) are different keys, and the split
    equals the formula over the joined text."""
    config = SplitConfig(by="a, b", seed=0)
    rows = con.sql(
        f"SELECT a, b, {split_expression(config)} FROM "
        f"(SELECT (range // 100)::VARCHAR AS a, (range % 100)::VARCHAR AS b FROM range(1000))"
    ).fetchall()

    assert [reference_split(f"{a}\x1f{b}", config) for a, b, _ in rows] == [r[2] for r in rows]


def test_add_split_keeps_the_columns_and_replaces_an_old_split(
    con: duckdb.DuckDBPyConnection,
) -> None:
    """The relation keeps its columns in order, with one fresh _split column at the end."""
    relation = "SELECT 7 AS id, 'x' AS _split, 'y' AS name"
    result = con.sql(add_split(relation, SplitConfig(by="id")))

    assert ["id", "name", "_split"] == result.columns
    assert [(7, "y", reference_split("7", SplitConfig(by="id")))] == result.fetchall()


@settings(max_examples=60, deadline=None)
@given(
    key=st.text(
        st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=30
    ),
    others=st.lists(st.text(max_size=10).filter(lambda s: "\x00" not in s), max_size=20),
    seed=st.integers(min_value=0, max_value=2**31),
)
def test_the_split_depends_only_on_key_and_seed(key: str, others: list[str], seed: int) -> None:
    """Whatever other rows surround a key, its split is the formula of (key, seed)."""
    config = SplitConfig(by="k", seed=seed)
    con = duckdb.connect()
    try:
        alone = splits_of(con, [key], config)[0]
        among = splits_of(con, [*others, key, *others], config)[len(others)]
    finally:
        con.close()

    assert reference_split(key, config) == alone == among


def test_add_split_agrees_with_split_expression(con: duckdb.DuckDBPyConnection) -> None:
    """The per-row shortcut in add_split (hash once) gives the same splits as the expression."""
    config = SplitConfig(by="k", train=0.6, validation=0.3, test=0.1, seed=4)
    relation = "SELECT range AS k FROM range(10000)"
    via_add = con.sql(f"SELECT k, _split FROM ({add_split(relation, config)}) ORDER BY k")
    via_expression = con.sql(f"SELECT k, {split_expression(config)} FROM ({relation}) ORDER BY k")

    assert via_expression.fetchall() == via_add.fetchall()
