"""The validate step: every declared check, every policy, on real DuckDB and Parquet."""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pytest

from headwater.config.models import ValidateConfig, ValidateStep
from headwater.exceptions import ConfigError, StepError, ValidationError
from headwater.steps.base import REJECTED_COLUMNS, StepOutput, step_function
from headwater.steps.validate import ValidationResult, duckdb_type, validate_relation

ORDERS = """
    SELECT * FROM (VALUES
        (1, '1.5', 'DE', '2024-01-01 10:00:00', '2024-01-02 10:00:00'),
        (2, '3.5', 'XX', '2024-01-03 10:00:00', '2024-01-01 10:00:00'),
        (3, '0',   'US', '2024-01-04 10:00:00', NULL)
    ) AS t(order_id, amount, country, ordered_at, shipped_at)
"""

SPEC_EXAMPLE = {
    "columns": {
        "order_id": {"type": "int64", "nullable": False, "unique": True},
        "amount": {"type": "float64", "min": 0, "max": 2},
        "country": {"type": "string", "in": ["DE", "FR", "US"]},
        "ordered_at": {"type": "timestamp"},
        "shipped_at": {"type": "timestamp"},
    },
    "rules": ["shipped_at IS NULL OR shipped_at >= ordered_at"],
}


@pytest.fixture
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    yield connection
    connection.close()


def config(**keys: Any) -> ValidateConfig:
    return ValidateConfig.model_validate({"input": "upstream", "on_error": "quarantine", **keys})


def check(
    con: duckdb.DuckDBPyConnection, relation: str, out: Path, **keys: Any
) -> ValidationResult:
    return validate_relation(con, relation, config(**keys), out_dir=out, run_id="r1", step_id="v")


def rejected(con: duckdb.DuckDBPyConnection, result: ValidationResult) -> list[dict[str, Any]]:
    assert result.rejected_path is not None
    table = con.sql(f"SELECT * FROM read_parquet('{result.rejected_path}')").to_arrow_table()
    return table.to_pylist()


def errors(con: duckdb.DuckDBPyConnection, result: ValidationResult) -> list[str]:
    return [row["_error"] for row in rejected(con, result)]


def good(con: duckdb.DuckDBPyConnection, result: ValidationResult) -> list[tuple[Any, ...]]:
    return con.sql(result.relation).fetchall()


# --------------------------------------------------------------------------- types


def test_declared_types_are_casts_and_an_integer_column_passes_as_float64(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """An integer column declared float64 passes, and the good rows come out as DOUBLE."""
    result = check(
        con, "SELECT range AS n FROM range(3)", tmp_path, columns={"n": {"type": "float64"}}
    )

    assert (3, 0) == (result.rows_good, result.rows_rejected)
    assert ["DOUBLE"] == [str(t) for t in con.sql(result.relation).types]
    assert [(0.0,), (1.0,), (2.0,)] == good(con, result)


def test_a_mixed_type_column_rejects_only_the_values_that_do_not_cast(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """Strings that are partly numbers: the numbers pass (cast), the rest are rejected."""
    relation = "SELECT * FROM (VALUES ('1'), ('abc'), (' 2.5 '), (NULL)) t(amount)"
    result = check(con, relation, tmp_path, columns={"amount": {"type": "float64"}})

    assert [(1.0,), (2.5,), (None,)] == good(con, result)
    assert ["amount: cannot cast 'abc' to float64"] == errors(con, result)
    assert {"amount: type float64": 1} == result.failures


def test_a_cast_to_an_integer_type_must_be_exact(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """'3.5' or 3.5 is not an int64 (DuckDB alone would round it); '4' and 4.0 are."""
    relation = "SELECT * FROM (VALUES ('4', 4.0), ('3.5', 3.5)) t(s, d)"
    result = check(
        con, relation, tmp_path, columns={"s": {"type": "int64"}, "d": {"type": "int64"}}
    )

    assert [(4, 4)] == good(con, result)
    assert ["s: cannot cast '3.5' to int64; d: cannot cast 3.5 to int64"] == errors(con, result)


def test_an_unparsable_timestamp_is_rejected(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """A timestamp that does not parse is a rejected row naming the value and the type."""
    relation = "SELECT * FROM (VALUES ('2024-02-01 08:00:00'), ('2024-13-45 99:00')) t(seen)"
    result = check(con, relation, tmp_path, columns={"seen": {"type": "timestamp"}})

    assert 1 == result.rows_good
    assert ["seen: cannot cast '2024-13-45 99:00' to timestamp"] == errors(con, result)


def test_an_out_of_range_integer_is_rejected_for_a_narrow_type(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """300 does not fit an int8: rejected rather than wrapped or clipped."""
    relation = "SELECT * FROM (VALUES (100), (300)) t(level)"
    result = check(con, relation, tmp_path, columns={"level": {"type": "int8"}})

    assert [(100,)] == good(con, result)
    assert ["level: cannot cast 300 to int8"] == errors(con, result)


def test_type_names_map_to_duckdb_types() -> None:
    """The YAML type names users write become the DuckDB types values are cast to."""
    names = ["int64", "uint8", "float32", "double", "str", "bool", "timestamp_tz", "decimal(10, 2)"]

    expected = [
        "BIGINT",
        "UTINYINT",
        "FLOAT",
        "DOUBLE",
        "VARCHAR",
        "BOOLEAN",
        "TIMESTAMPTZ",
        "DECIMAL(10,2)",
    ]
    assert expected == [duckdb_type(name) for name in names]


def test_an_unknown_type_name_is_a_config_error_with_a_suggestion(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """A typo in a type name fails before any row is read, and suggests the right name."""
    with pytest.raises(ConfigError) as caught:
        check(con, "SELECT 1 AS n", tmp_path, columns={"n": {"type": "flaot64"}})

    assert "did you mean 'float64'?" in str(caught.value)


# --------------------------------------------------------------------------- value checks


def test_every_failed_check_of_a_row_is_named_in_its_error(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """The SPEC's example: one row breaks max, in and the rule; _error names all three."""
    result = check(con, ORDERS, tmp_path, **SPEC_EXAMPLE)

    expected = (
        "amount: 3.5 > max 2; country: 'XX' not in [DE, FR, US]; "
        "rule failed: shipped_at IS NULL OR shipped_at >= ordered_at"
    )
    assert [expected] == errors(con, result)
    assert [1, 3] == [row[0] for row in good(con, result)]


def test_min_and_max_bounds(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    """Values outside [min, max] are rejected; the bounds themselves pass."""
    relation = "SELECT * FROM (VALUES (-1), (0), (10), (11)) t(n)"
    result = check(con, relation, tmp_path, columns={"n": {"min": 0, "max": 10}})

    assert [(0,), (10,)] == good(con, result)
    assert ["n: -1 < min 0", "n: 11 > max 10"] == errors(con, result)
    assert {"n: min 0": 1, "n: max 10": 1} == result.failures


def test_a_date_bound_is_compared_as_a_date(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    """A quoted bound is cast to the column's type, so dates compare as dates."""
    relation = "SELECT * FROM (VALUES ('2023-12-31'), ('2024-01-01')) t(day)"
    result = check(con, relation, tmp_path, columns={"day": {"type": "date", "min": "2024-01-01"}})

    assert ["day: 2023-12-31 < min 2024-01-01"] == errors(con, result)


def test_a_numeric_bound_on_a_text_column_asks_for_a_type(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """min: 0 on text would compare as text ('10' < '9'); the step says to declare a type."""
    with pytest.raises(ValidationError) as caught:
        check(con, "SELECT '5' AS amount", tmp_path, columns={"amount": {"min": 0}})

    assert "declare its type" in str(caught.value)


def test_regex_and_max_length(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    """regex must match somewhere in the value (anchor it to match it all); max_length counts
    characters."""
    relation = "SELECT * FROM (VALUES ('ab12'), ('abc'), ('ab123456')) t(code)"
    columns = {"code": {"regex": "^[a-z]+[0-9]+$", "max_length": 6}}
    result = check(con, relation, tmp_path, columns=columns)

    assert [("ab12",)] == good(con, result)
    assert [
        "code: 'abc' does not match regex '^[a-z]+[0-9]+$'",
        "code: length 8 > max_length 6",
    ] == errors(con, result)


def test_a_list_value_that_does_not_cast_names_the_check(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """in: [x] on an integer column cannot work; the error says which check, before reading."""
    with pytest.raises(ValidationError) as caught:
        check(con, "SELECT 1 AS n", tmp_path, columns={"n": {"in": ["x"]}})

    assert "check 'n: in [x]' is invalid" in str(caught.value)


def test_nulls_in_a_non_nullable_column_are_rejected(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """nullable: false rejects NULLs; every other check lets NULL through."""
    relation = "SELECT * FROM (VALUES (1, 'a'), (NULL, NULL)) t(id, tag)"
    columns = {"id": {"nullable": False}, "tag": {"in": ["a"], "regex": "^a$", "min": "a"}}
    result = check(con, relation, tmp_path, columns=columns)

    assert ["id: is null (nullable: false)"] == errors(con, result)


def test_a_duplicate_key_keeps_the_first_good_row(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """unique keeps one row per key: the first that passes everything else; NULLs are not
    duplicates."""
    relation = """SELECT * FROM (VALUES
        (1, 5), (1, 6), (2, -1), (2, 7), (NULL, 8), (NULL, 9)) t(id, amount)"""
    columns = {"id": {"unique": True}, "amount": {"min": 0}}
    result = check(con, relation, tmp_path, columns=columns)

    assert [(1, 5), (2, 7), (None, 8), (None, 9)] == good(con, result)
    assert [
        "id: duplicate 1 (duplicate of row 1)",
        "amount: -1 < min 0; id: duplicate 2 (duplicate of row 4)",
    ] == errors(con, result)


def test_a_duplicate_rejected_only_for_its_key_keeps_its_original_text(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """A row rejected by unique alone is found after the pass, yet its _row still holds the
    values as they arrived ('01', not the cast 1)."""
    relation = "SELECT * FROM (VALUES ('1', 'a'), ('01', 'b')) t(id, tag)"
    result = check(con, relation, tmp_path, columns={"id": {"type": "int64", "unique": True}})
    [row] = rejected(con, result)

    assert [(1, "a")] == good(con, result)
    assert ("id: duplicate 1 (duplicate of row 1)", "v:row 2") == (row["_error"], row["_source"])
    assert {"id": "01", "tag": "b"} == json.loads(row["_row"])


def test_every_unique_column_is_checked_on_its_own(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """Two unique columns: a row repeating both keys names both, sorted with its other
    problems; each key keeps its own first row."""
    relation = "SELECT * FROM (VALUES (1, 'a', 1), (2, 'a', 1), (1, 'a', -1)) t(id, code, n)"
    columns = {"id": {"unique": True}, "code": {"unique": True}, "n": {"min": 0}}
    result = check(con, relation, tmp_path, columns=columns)

    assert [(1, "a", 1)] == good(con, result)
    assert [
        "code: duplicate 'a' (duplicate of row 1)",
        "n: -1 < min 0; id: duplicate 1 (duplicate of row 1); "
        "code: duplicate 'a' (duplicate of row 1)",
    ] == errors(con, result)
    assert {"code: unique": 2, "n: min 0": 1, "id: unique": 1} == result.failures


def test_an_input_column_named_file_row_number_does_not_change_row_numbers(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """The spill numbers rows with Parquet's file_row_number unless the input has a column
    of that name, which then comes through untouched."""
    relation = "SELECT * FROM (VALUES (7, 1), (7, 1), (9, -1)) t(file_row_number, n)"
    result = check(con, relation, tmp_path, columns={"n": {"unique": True, "min": 0}})

    assert [(7, 1)] == good(con, result)
    assert ["v:row 2", "v:row 3"] == [row["_source"] for row in rejected(con, result)]


def test_duplicates_keep_the_good_rows_in_input_order_across_row_groups(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """Over a many-row-group input, rejecting duplicates neither reorders the good rows nor
    misnumbers the rejected ones."""
    data = tmp_path / "in.parquet"
    con.execute(
        f"COPY (SELECT CASE WHEN range % 1000 = 999 THEN range - 1 ELSE range END AS k, "
        f"range AS i FROM range(200000)) TO '{data}' (FORMAT parquet, ROW_GROUP_SIZE 10000)"
    )
    relation = f"SELECT * FROM read_parquet('{data}')"
    result = check(con, relation, tmp_path / "out", columns={"k": {"unique": True}})

    kept = [i for (_, i) in good(con, result)]
    assert [i for i in range(200000) if i % 1000 != 999] == kept
    assert [f"v:row {i + 1}" for i in range(999, 200000, 1000)] == [
        row["_source"] for row in rejected(con, result)
    ]


def test_a_rule_that_evaluates_to_null_passes(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """As in a SQL CHECK constraint, only a rule that is FALSE rejects the row."""
    relation = "SELECT * FROM (VALUES (1, 2), (NULL, 2), (3, 2)) t(a, b)"
    result = check(con, relation, tmp_path, rules=["a < b"])

    assert [(1, 2), (None, 2)] == good(con, result)
    assert ["rule failed: a < b"] == errors(con, result)


def test_a_rule_may_end_in_a_comment(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    """A rule written with a trailing SQL comment still works and is quoted verbatim."""
    relation = "SELECT * FROM (VALUES (1), (-1)) t(a)"
    result = check(con, relation, tmp_path, rules=["a > 0 -- refunds are separate"])

    assert ["rule failed: a > 0 -- refunds are separate"] == errors(con, result)


def test_a_rule_sees_the_declared_types(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    """Rules compare cast values: '10' > '9' as numbers, not as text."""
    relation = "SELECT * FROM (VALUES ('10', '9')) t(a, b)"
    result = check(
        con,
        relation,
        tmp_path,
        columns={"a": {"type": "int"}, "b": {"type": "int"}},
        rules=["a > b"],
    )

    assert 1 == result.rows_good


def test_a_rule_referencing_a_missing_column_fails_naming_the_rule(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """A rule that does not bind is a ValidationError naming the rule, not a DuckDB error."""
    with pytest.raises(ValidationError) as caught:
        check(con, "SELECT 1 AS a", tmp_path, rules=["a > 0", "shipped_at >= a"])

    assert "rule 'shipped_at >= a' cannot be evaluated" in str(caught.value)
    assert "shipped_at" in str(caught.value)


def test_a_missing_declared_column_fails_with_a_hint(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """A declared column absent from the input names itself and the closest real column."""
    with pytest.raises(ValidationError) as caught:
        check(con, "SELECT 1 AS order_id", tmp_path, columns={"orderid": {"nullable": False}})

    expected = (
        "validate step 'v': column 'orderid' is not in the input (columns: order_id); "
        "did you mean 'order_id'?"
    )
    assert expected == str(caught.value)


# --------------------------------------------------------------------------- outputs


def test_the_rejected_file_has_the_one_rejected_schema(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """Rejected rows carry run, step, source, reasons and the original row as JSON strings."""
    result = check(con, ORDERS, tmp_path, **SPEC_EXAMPLE)
    assert result.rejected_path is not None
    schema = con.sql(f"DESCRIBE SELECT * FROM read_parquet('{result.rejected_path}')").fetchall()
    [row] = rejected(con, result)

    assert [(name, "VARCHAR") for name in REJECTED_COLUMNS] == [(c[0], c[1]) for c in schema]
    assert ("r1", "v", "v:row 2") == (row["_run_id"], row["_step"], row["_source"])
    assert {
        "order_id": 2,
        "amount": "3.5",
        "country": "XX",
        "ordered_at": "2024-01-03 10:00:00",
        "shipped_at": "2024-01-01 10:00:00",
    } == json.loads(row["_row"])


def test_the_source_column_is_used_when_the_input_has_one(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """A _source column (file:line from a source step) identifies the rejected row."""
    relation = "SELECT * FROM (VALUES ('a.csv:2', 1), ('a.csv:3', -1)) t(_source, n)"
    result = check(con, relation, tmp_path, columns={"n": {"min": 0}})

    assert ["a.csv:3"] == [row["_source"] for row in rejected(con, result)]


def test_row_numbers_follow_the_input_order_across_row_groups(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """Over a many-row-group Parquet file, 'row n' is the row's position in the input."""
    data = tmp_path / "in.parquet"
    con.execute(
        f"COPY (SELECT range AS i FROM range(300000)) TO '{data}' "
        f"(FORMAT parquet, ROW_GROUP_SIZE 10000)"
    )
    relation = f"SELECT * FROM read_parquet('{data}')"
    result = check(con, relation, tmp_path / "out", rules=["i % 50000 <> 49999"])

    expected = [f"v:row {i + 1}" for i in range(49999, 300000, 50000)]
    assert expected == [row["_source"] for row in rejected(con, result)]
    assert 300000 - 6 == result.rows_good


def test_empty_input(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    """No rows in, no rows out, no rejected file, and the good relation keeps its types."""
    result = check(con, "SELECT 'x' AS n WHERE false", tmp_path, columns={"n": {"type": "int32"}})

    assert (0, 0, 0, None) == (
        result.rows_in,
        result.rows_good,
        result.rows_rejected,
        result.rejected_path,
    )
    assert ["INTEGER"] == [str(t) for t in con.sql(result.relation).types]


def test_all_rows_rejected(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    """Quarantine without a max_error_ratio keeps going even when nothing is good."""
    result = check(con, "SELECT range AS n FROM range(5)", tmp_path, columns={"n": {"min": 10}})

    assert (5, 0, 5) == (result.rows_in, result.rows_good, result.rows_rejected)
    assert [] == good(con, result)
    assert 5 == len(rejected(con, result))


# --------------------------------------------------------------------------- policies


def test_on_error_fail_raises_with_the_top_checks_and_examples(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """fail: any rejected row fails the step; the message counts and shows an example."""
    with pytest.raises(ValidationError) as caught:
        check(con, ORDERS, tmp_path, on_error="fail", **SPEC_EXAMPLE)

    message = str(caught.value)
    assert message.startswith("validate step 'v' rejected 1 of 3 rows (on_error: fail): ")
    assert "amount: max 2 (1 row, e.g. amount: 3.5 > max 2)" in message
    assert 1 == caught.value.context["rows_rejected"]
    assert str(pickle.loads(pickle.dumps(caught.value))) == message


def test_on_error_drop_counts_but_keeps_no_file(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """drop: bad rows are counted and left out; nothing is written for them."""
    result = check(con, ORDERS, tmp_path, on_error="drop", **SPEC_EXAMPLE)

    assert (2, 1, None) == (result.rows_good, result.rows_rejected, result.rejected_path)
    assert not (tmp_path / "v.rejected.parquet").exists()


def test_max_error_ratio_fails_even_when_quarantining(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """More rejected rows than max_error_ratio allows fails the step under any policy."""
    relation = "SELECT range AS n FROM range(100)"
    ok = check(con, relation, tmp_path, columns={"n": {"max": 97}}, max_error_ratio=0.02)
    with pytest.raises(ValidationError) as caught:
        check(con, relation, tmp_path, columns={"n": {"max": 96}}, max_error_ratio=0.02)

    assert 2 == ok.rows_rejected
    assert "rejected 3 of 100 rows (3.00%), more than max_error_ratio 2.00%" in str(caught.value)


def test_an_unreadable_input_is_a_step_error(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """An input that does not exist is the upstream's problem, reported as a StepError."""
    with pytest.raises(StepError) as caught:
        check(con, "no_such_view", tmp_path)

    assert "cannot read its input" in str(caught.value)


# --------------------------------------------------------------------------- the step


@dataclass
class FakeContext:
    """The StepContext attributes run_validate uses, over a real DuckDB connection."""

    con: duckdb.DuckDBPyConnection
    workdir: Path
    inputs: Mapping[str, StepOutput]
    run_id: str = "run-7"
    step_id: str = "checked"
    logged: list[tuple[str, str]] = field(default_factory=list)

    def cursor(self) -> duckdb.DuckDBPyConnection:
        return self.con

    def log(self, message: str, level: str = "info", **fields: Any) -> None:
        self.logged.append((level, message))


def test_the_registered_step_quarantines_and_reports(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """The engine's path: the registry finds run_validate, which returns the good relation,
    the rejected file and the counts."""
    step = ValidateStep.model_validate(
        {"id": "checked", "validate": {"input": "clean", "on_error": "quarantine", **SPEC_EXAMPLE}}
    )
    ctx = FakeContext(con, tmp_path, {"clean": StepOutput(relation=ORDERS, rows=3)})

    output = step_function("validate")(ctx, step)  # type: ignore[arg-type]

    assert 2 == output.rows
    assert [str(tmp_path / "checked.rejected.parquet")] == output.rejected
    assert 1 == output.info["rows_rejected"]
    assert {"amount: max 2": 1, "country: in [DE, FR, US]": 1} == {
        k: v for k, v in output.info["failures"].items() if not k.startswith("rule")
    }
    assert [1, 3] == [row[0] for row in con.sql(output.relation or "").fetchall()]
    assert [("warning", "rejected 1 of 3 rows (quarantine)")] == ctx.logged
