"""``source: {type: sql}`` against the real PostgreSQL, MariaDB and SQLite on this machine."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import headwater as hw
from tests.conftest import ProjectFactory

MARIADB = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": "",
           "database": "test"}


def _pg_url(pg_database: str) -> str:
    return pg_database.replace("postgresql+psycopg://", "postgresql://")


def _pg(pg_database: str, *statements: str, params: Any = None) -> None:
    import psycopg

    with psycopg.connect(_pg_url(pg_database), autocommit=True) as conn:
        for sql in statements:
            conn.execute(sql, params)


def _project(make_project: ProjectFactory, url: str, source: str,
             kind: str = "postgres", mode: str = "append") -> Path:
    pipeline = f"""
        name: load
        steps:
          - id: raw
            retries: {{count: 2, backoff: 0.05}}
            source: {source}
          - id: publish
            publish: {{input: raw, dataset: items, mode: {mode}}}
        """
    return make_project({"load": pipeline},
                        settings=f"connections:\n  db: {{type: {kind}, url: \"{url}\"}}\n")


def _ids(project: hw.Project, column: str = "id") -> list[Any]:
    return sorted(project.dataset("items").to_arrow()[column].to_pylist())


# --------------------------------------------------------------------------- PostgreSQL


@pytest.mark.services
def test_postgres_types_map_faithfully(make_project: ProjectFactory, pg_database: str) -> None:
    """Every common PostgreSQL type lands as its Arrow counterpart, values intact."""
    _pg(pg_database,
        "CREATE TYPE mood AS ENUM ('sad', 'happy')",
        """CREATE TABLE t (id bigint PRIMARY KEY, i2 smallint, i4 int, n numeric(20,4),
           f8 double precision, b bool, s text, ts timestamp, tstz timestamptz, d date,
           j jsonb, ai int[], at text[], u uuid, raw bytea, m mood)""",
        """INSERT INTO t VALUES (1, 2, 3, 12345678901234.5678, 2.5, true, 'x',
           '2024-01-01 10:00', '2024-01-01 10:00+02', '2024-01-02', '{"a": [1, 2]}',
           '{1,2,3}', '{a,b}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x0102', 'happy'),
           (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
           NULL, NULL)""")
    root = _project(make_project, _pg_url(pg_database), "{type: sql, connection: db, table: t}")
    with hw.Project(root) as project:
        run = project.run("load")
        assert "succeeded" == run.status, run.error
        table = project.dataset("items").to_arrow().sort_by("id")
    expected = {"id": pa.int64(), "i2": pa.int16(), "i4": pa.int32(),
                "n": pa.decimal128(20, 4), "f8": pa.float64(), "b": pa.bool_(),
                "s": pa.string(), "ts": pa.timestamp("us"),
                "tstz": pa.timestamp("us", tz="UTC"), "d": pa.date32(), "j": pa.string(),
                "ai": pa.list_(pa.int32()), "at": pa.list_(pa.string()), "u": pa.string(),
                "raw": pa.binary(), "m": pa.string()}
    actual = {f.name: f.type for f in table.schema}
    assert {k: str(v) for k, v in expected.items()} == \
        {k: str(actual[k]).replace("large_", "").replace("element", "item") for k in expected}
    row = table.slice(0, 1).to_pylist()[0]
    assert Decimal("12345678901234.5678") == row["n"]
    assert dt.datetime(2024, 1, 1, 8, 0, tzinfo=dt.UTC) == row["tstz"]
    assert dt.datetime(2024, 1, 1, 10, 0) == row["ts"]
    assert {"a": [1, 2]} == __import__("json").loads(row["j"])
    assert [1, 2, 3] == row["ai"]
    assert str(uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")) == row["u"]
    assert b"\x01\x02" == row["raw"]
    assert "happy" == row["m"]
    assert 2 == table.num_rows


def _events(pg_database: str, rows: list[tuple[int, str]]) -> None:
    import psycopg

    with psycopg.connect(_pg_url(pg_database), autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO ev (id, updated_at, v) VALUES (%s, %s::timestamptz, 'x')",
                        rows)


@pytest.mark.services
def test_postgres_incremental_ties_exactly_once(make_project: ProjectFactory,
                                                pg_database: str) -> None:
    """Rows sharing the high-water mark that arrive after a run are read once, never twice."""
    _pg(pg_database, "CREATE TABLE ev (id int PRIMARY KEY, updated_at timestamptz, v text)")
    t1, t2, t3 = "2024-01-01 10:00+00", "2024-01-01 11:00+00", "2024-01-01 12:00+00"
    _events(pg_database, [(1, t1), (2, t1), (3, t2), (4, t2)])
    source = ("{type: sql, connection: db, table: ev, "
              "incremental: {cursor: updated_at, initial: '2024-01-01T00:00:00+00:00'}}")
    root = _project(make_project, _pg_url(pg_database), source)
    with hw.Project(root) as project:
        assert project.run("load").ok
        assert [1, 2, 3, 4] == _ids(project)
        _events(pg_database, [(5, t2), (6, t2), (7, t3)])
        second = project.run("load")
        assert second.ok, second.error
        assert [1, 2, 3, 4, 5, 6, 7] == _ids(project)
        _events(pg_database, [(8, t3)])
        assert project.run("load").ok
        assert project.run("load").ok  # nothing new: no duplicate, no new version
        assert [1, 2, 3, 4, 5, 6, 7, 8] == _ids(project)
        assert [1, 2, 3] == project.dataset("items").versions()
        state = project.runtime.store.state("load", "raw")["cursor"]
    assert "2024-01-01T12:00:00+00:00" == state["value"]
    assert [[7], [8]] == state["keys"]


@pytest.mark.services
def test_postgres_partitions_read_every_row_once(make_project: ProjectFactory,
                                                 pg_database: str) -> None:
    """Four parallel ranges of ``id`` (and a NULL) together read each row exactly once."""
    _pg(pg_database, "CREATE TABLE t (id int, v text)",
        "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 10001) g",
        "INSERT INTO t VALUES (NULL, 'null id')")
    source = "{type: sql, connection: db, table: t, partitions: {column: id, count: 4}}"
    root = _project(make_project, _pg_url(pg_database), source)
    with hw.Project(root) as project:
        run = project.run("load")
        assert run.ok, run.error
        values = project.dataset("items").to_arrow()["v"].to_pylist()
    assert 10002 == len(values)
    assert 10002 == len(set(values))
    parts = list((root / ".headwater" / "runs").rglob("raw.sql/part-*.parquet"))
    assert 4 == len({p.name.split("-")[1] for p in parts})


@pytest.mark.services
def test_query_source_and_unmappable_type(make_project: ProjectFactory,
                                          pg_database: str) -> None:
    """A ``query:`` reads its result; an interval column fails naming the column and type."""
    root = _project(make_project, _pg_url(pg_database),
                    "{type: sql, connection: db, query: \"SELECT 1 AS id, interval '1 day' "
                    "AS wait\"}")
    with hw.Project(root) as project:
        run = project.run("load")
    assert "failed" == run.status
    assert "raw" in (run.error or "")
    assert "column 'wait' has type 'interval'" in (run.error or "")


@pytest.mark.services
def test_database_down_retries_then_fails_masked(make_project: ProjectFactory) -> None:
    """Connection refused is retried per the step's retries, then fails without the secret."""
    canary = "canary-pw-81x"
    root = _project(make_project, f"postgresql://app:{canary}@127.0.0.1:1/nowhere",
                    "{type: sql, connection: db, table: t}")
    with hw.Project(root) as project:
        run = project.run("load")
        attempts = [s for s in run.steps if s.step_id == "raw"]
    assert "failed" == run.status
    assert "cannot connect to connection 'db' (postgres)" in (run.error or "")
    assert canary not in (run.error or "")
    assert [3] == [s.attempt for s in attempts]


@pytest.mark.services
def test_failed_run_leaves_cursor_and_dataset(make_project: ProjectFactory,
                                              pg_database: str) -> None:
    """A query error after a good run leaves the state and the dataset as they were."""
    _pg(pg_database, "CREATE TABLE ev (id int PRIMARY KEY, updated_at timestamptz, v text)")
    _events(pg_database, [(1, "2024-01-01 10:00+00")])
    source = "{type: sql, connection: db, table: ev, incremental: {cursor: updated_at}}"
    root = _project(make_project, _pg_url(pg_database), source)
    with hw.Project(root) as project:
        assert project.run("load").ok
        before = project.runtime.store.state("load", "raw")
        _pg(pg_database, "ALTER TABLE ev RENAME TO ev_gone")
        failed = project.run("load")
        assert "failed" == failed.status
        assert "rejected the query" in (failed.error or "")
        assert 'relation "ev" does not exist' in (failed.error or "")
        assert before == project.runtime.store.state("load", "raw")
        assert [1] == project.dataset("items").versions()


# --------------------------------------------------------------------------- MariaDB


@pytest.fixture
def maria_table() -> Iterator[tuple[str, Any]]:
    """A uniquely named table in MariaDB's ``test`` database, dropped afterwards."""
    import pymysql

    name = f"hw_{uuid.uuid4().hex[:10]}"
    conn = pymysql.connect(**MARIADB, autocommit=True)  # type: ignore[arg-type]
    try:
        yield name, conn
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS `{name}`")
        conn.close()


MARIA_URL = "mysql://root@127.0.0.1:3306/test"


@pytest.mark.services
def test_mariadb_types_and_incremental_ties(make_project: ProjectFactory,
                                            maria_table: tuple[str, Any]) -> None:
    """MariaDB types map faithfully and a DATETIME cursor with ties reads each row once."""
    name, conn = maria_table
    with conn.cursor() as cur:
        cur.execute(f"""CREATE TABLE `{name}` (id BIGINT PRIMARY KEY, small SMALLINT,
            amount DECIMAL(12,2), score DOUBLE, flag BOOLEAN, note VARCHAR(20), doc JSON,
            raw BLOB, kind ENUM('a','b'), born DATE, ts DATETIME(6), uts TIMESTAMP(6) NULL,
            big BIGINT UNSIGNED)""")
        cur.execute(f"""INSERT INTO `{name}` VALUES
            (1, 2, 12.34, 0.5, TRUE, 'x', '{{"a": 1}}', x'0102', 'b', '2024-01-02',
             '2024-01-01 10:00:00', '2024-01-01 10:00:00', 18446744073709551615),
            (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
             '2024-01-01 10:00:00', NULL, NULL)""")
    source = (f"{{type: sql, connection: db, table: {name}, "
              "incremental: {cursor: ts}}")
    root = _project(make_project, MARIA_URL, source, kind="mysql")
    with hw.Project(root) as project:
        first = project.run("load")
        assert first.ok, first.error
        table = project.dataset("items").to_arrow().sort_by("id")
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO `{name}` (id, ts) VALUES (3, '2024-01-01 10:00:00'), "
                        "(4, '2024-01-01 11:00:00')")
        second = project.run("load")
        assert second.ok, second.error
        assert [1, 2, 3, 4] == _ids(project)
    types = {f.name: str(f.type) for f in table.schema}
    expected = {"id": "int64", "small": "int16", "amount": "decimal128(12, 2)",
                "score": "double", "flag": "bool", "born": "date32[day]",
                "ts": "timestamp[us]", "uts": "timestamp[us, tz=UTC]",
                "big": "decimal128(20, 0)"}  # Delta has no unsigned type: publish widens
    assert expected == {k: types[k] for k in expected}
    row = table.slice(0, 1).to_pylist()[0]
    assert (Decimal("12.34"), True, b"\x01\x02", "b", 18446744073709551615) == \
        (row["amount"], row["flag"], row["raw"], row["kind"], row["big"])
    assert {"a": 1} == __import__("json").loads(row["doc"])


# --------------------------------------------------------------------------- SQLite / generic


def _sqlite_db(path: Path) -> None:
    import sqlite3

    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, amount REAL, "
                     "seen TEXT)")
        conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?)",
                         [(i, f"n{i}", i * 1.5, "2024-01-01") for i in range(1, 6)])
    conn.close()


@pytest.mark.parametrize("kind", ["sqlite", "sqlalchemy"])
def test_sqlite_and_generic_url_incremental(make_project: ProjectFactory, kind: str) -> None:
    """SQLite (and the same file through a generic SQLAlchemy URL) reads incrementally;
    a relative path is relative to the project folder, wherever the run starts from."""
    source = "{type: sql, connection: db, table: t, incremental: {cursor: id}, batch_rows: 2}"
    root = _project(make_project, "sqlite:///data/src.db", source, kind=kind)
    db = root / "data" / "src.db"
    db.parent.mkdir()
    _sqlite_db(db)
    with hw.Project(root) as project:
        assert project.run("load").ok
        import sqlite3

        with sqlite3.connect(db) as conn:
            conn.execute("INSERT INTO t VALUES (6, 'n6', 9.0, '2024-01-02')")
        conn.close()
        run = project.run("load")
        assert run.ok, run.error
        assert [1, 2, 3, 4, 5, 6] == _ids(project)
        table = project.dataset("items").to_arrow().sort_by("id")
        assert 4.5 == table["amount"][2].as_py()


@pytest.mark.services
def test_generic_sqlalchemy_url_on_postgres(make_project: ProjectFactory,
                                            pg_database: str) -> None:
    """``type: sqlalchemy`` with a driver URL reads through SQLAlchemy's streamed results."""
    _pg(pg_database, "CREATE TABLE t (id int PRIMARY KEY, name text)",
        "INSERT INTO t SELECT g, 'n' || g FROM generate_series(1, 50) g")
    root = _project(make_project, pg_database, "{type: sql, connection: db, table: t}",
                    kind="sqlalchemy")
    with hw.Project(root) as project:
        run = project.run("load")
        assert run.ok, run.error
        assert list(range(1, 51)) == _ids(project)
