"""A publish fanned out to a cluster: workers encode the version's files, the server
commits them.

On one core the publish re-reads every Parquet part its input left in the run folder and
re-encodes it into Delta: on a cluster that was the serial tail of every partitioned run
(1.0 s of a 3.7 s two-million-row run). When the input is such a list of Parquet files,
the step plans as always on the server (the normalised casts, the schema check under
``freeze``/``evolve``, the casts to the dataset's types, the ``_split`` column), then
hands the final query to the workers: each runs it over its share of the files and
writes Delta data files straight into the table root (``datasets.parts.write_parts``),
returning only their descriptions. The server commits all of them in one Delta
transaction with the run's app id (``datasets.publish.publish_parts``), so a version
stays atomic and exactly-once; files of a task that died or was retried are orphans no
commit lists.

Only row-wise work fans out: ``append`` and ``overwrite`` without ``dedupe``. A merge,
a dedupe, a remote warehouse (its credentials stay on the server), an input that is not
a list of Parquet files, or an executor without workers publish on the server.
"""

from __future__ import annotations

import functools
import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from headwater.config.models import PublishConfig
from headwater.sqltext import ident as quote
from headwater.sqltext import text as sql_string
from headwater.steps.base import StepContext, StepOutput

if TYPE_CHECKING:
    from headwater.datasets.parts import Part, Plan
    from headwater.datasets.publish import PublishResult, VersionFacts
    from headwater.datasets.stream_stats import StreamStats

INPUT_VIEW = "__hw_publish_input"
"""The name the final query reads its input by: on the server a view over every input
file, on a worker one over that worker's share (the query text is the same)."""
MAX_TASKS = 16
"""At most this many write tasks (input files are grouped beyond it): each writes at
least one Delta file, so more tasks would mean more small files, not more parallelism."""
BATCH_ROWS = 256_000

_FILES = re.compile(r"SELECT \* FROM read_parquet\(\[(?P<list>.*)\], union_by_name=true\)",
                    re.DOTALL)
_LITERAL = re.compile(r"'((?:[^']|'')*)'")


def input_files(relation: str) -> list[str] | None:
    """The Parquet files a relation reads, if it is exactly ``SELECT * FROM
    read_parquet([...], union_by_name=true)`` (what a fanned-out source returns)."""
    match = _FILES.fullmatch(relation.strip())
    if match is None:
        return None
    listing = match.group("list")
    files = [m.group(1).replace("''", "'") for m in _LITERAL.finditer(listing)]
    rebuilt = ", ".join(sql_string(f) for f in files)
    return files if files and rebuilt == listing.strip() else None


def shares(ctx: StepContext, config: PublishConfig, source: StepOutput,
           uri: str) -> list[tuple[int, list[str]]] | None:
    """The input files grouped into write tasks, or None when this publish stays whole
    on the server (see the module docstring for when)."""
    if ctx.fan_out is None or config.mode not in ("append", "overwrite") or config.dedupe:
        return None
    if "://" in uri and not uri.startswith("file://"):
        return None
    files = input_files(source.relation or "")
    if not files or len(files) < 2 or not source.rows:
        return None
    count = min(len(files), MAX_TASKS)
    size = -(-len(files) // count)
    return [(i, files[i * size:(i + 1) * size]) for i in range(count)
            if files[i * size:(i + 1) * size]]


def input_view(con: Any, relation: str) -> str:
    """Name the whole input ``INPUT_VIEW`` on the step's cursor; the relation to plan on."""
    con.execute(f"CREATE OR REPLACE TEMP VIEW {quote(INPUT_VIEW)} AS {relation}")
    return f"SELECT * FROM {quote(INPUT_VIEW)}"


def drop_input_view(con: Any) -> None:
    con.execute(f"DROP VIEW IF EXISTS {quote(INPUT_VIEW)}")


@dataclass(frozen=True)
class WriteTask:
    """What every write task shares (pickled once per task: a query and a schema)."""

    query: str
    """The final query, reading ``INPUT_VIEW``."""
    columns: tuple[tuple[str, str], ...]
    """The input's columns and DuckDB types as the server bound them over every file:
    a share of the files may lack a column or infer a narrower type."""
    schema: pa.Schema
    """The Delta schema every file is written with (and the commit declares)."""
    uri: str
    partition_by: tuple[str, ...]
    prefix: str
    sample_rows: int | None = None
    """Rows of this share's statistics sample (None: the version gets no statistics)."""
    sample_dir: str = ""
    """Where the sample goes (the run folder): rows never travel through the scheduler."""


@dataclass(frozen=True)
class ShareStats:
    """A share's exact facts and the file of its systematic sample (every ``stride``-th
    row), watched as its rows were written (``datasets.stream_stats.StreamStats``)."""

    rows: int
    stride: int
    nulls: dict[str, int]
    mins: dict[str, Any]
    maxs: dict[str, Any]
    sample: str


@dataclass(frozen=True)
class Written:
    """What one write task returns: file descriptions and statistics, never rows."""

    parts: list[Part]
    stats: ShareStats | None


def write_share(task: WriteTask, share: tuple[int, Sequence[str]]) -> Written:
    """On a worker: the final query over one share of the input, as Delta data files in
    the table root, its statistics watched on the way; descriptions go back."""
    import duckdb

    from headwater.datasets.parts import write_parts
    from headwater.datasets.stream_stats import StreamStats

    index, files = share
    stream = StreamStats(task.sample_rows) if task.sample_rows else None
    threads = os.environ.get("HEADWATER_DUCKDB_THREADS", "").strip()  # engine.duckdb_pool
    con = duckdb.connect(config={"threads": int(threads)} if threads.isdigit() and
                         int(threads) > 0 else {})
    try:
        con.execute("SET enable_progress_bar = false")
        con.execute(f"CREATE TEMP VIEW {quote(INPUT_VIEW)} AS "
                    f"{_share_relation(con, files, task.columns)}")
        reader = con.sql(task.query).to_arrow_reader(BATCH_ROWS)
        parts = write_parts(reader, task.uri, partition_by=task.partition_by,
                            schema=task.schema, prefix=f"{task.prefix}-{index:03d}-",
                            on_batch=stream.add if stream is not None else None)
    finally:
        con.close()
    return Written(parts, _share_stats(stream, task, index) if stream is not None else None)


def _share_stats(stream: StreamStats, task: WriteTask, index: int) -> ShareStats:
    """The share's facts, its sample written to the run folder (a fresh name per
    attempt, so a retried task never mixes with a dead one's file)."""
    import pyarrow.parquet as pq

    path = os.path.join(task.sample_dir,
                        f"{task.prefix}-{index:03d}-{uuid.uuid4().hex[:8]}.sample.parquet")
    pq.write_table(stream.sample(), path)
    return ShareStats(rows=stream.rows, stride=stream.stride, nulls=dict(stream.nulls),
                      mins=dict(stream.mins), maxs=dict(stream.maxs), sample=path)


def combined_stats(shares: Sequence[ShareStats], schema: pa.Schema,
                   sample_rows: int) -> StreamStats:
    """One ``StreamStats`` of the whole version from its shares: facts added up, samples
    thinned to the coarsest share's stride (each share then contributes in proportion
    to its rows) and to ``sample_rows``. Exact when every share kept every row."""
    import pyarrow.parquet as pq

    from headwater.datasets.stream_stats import StreamStats

    stream = StreamStats(sample_rows)
    stream.schema = schema
    stream.stride = max((s.stride for s in shares if s.rows), default=1)
    for share in shares:
        if not share.rows:  # nothing watched: no facts, and its sample has no columns
            continue
        stream.rows += share.rows
        for name, nulls in share.nulls.items():
            stream.nulls[name] = stream.nulls.get(name, 0) + nulls
        for name in set(share.mins) | set(share.maxs):
            stream._extend(name, share.mins.get(name), share.maxs.get(name))
        table = pq.read_table(share.sample, schema=schema)
        step = stream.stride // share.stride
        if step > 1:
            table = table.take(pa.array(range(0, table.num_rows, step), pa.int64()))
        stream.kept.extend((0, batch) for batch in table.to_batches())
        stream.kept_rows += table.num_rows
    while stream.kept_rows > stream.sample_rows:
        stream._thin()
    return stream


def _share_relation(con: Any, files: Sequence[str],
                    columns: Sequence[tuple[str, str]]) -> str:
    """The share's files with exactly the whole input's columns and types."""
    read = (f"SELECT * FROM read_parquet([{', '.join(sql_string(f) for f in files)}], "
            "union_by_name=true)")
    rel = con.sql(read)
    have = dict(zip(rel.columns, (str(t) for t in rel.types), strict=True))
    if list(have.items()) == list(columns):
        return read
    select = ", ".join(
        quote(name) if have.get(name) == dtype else
        f"CAST({quote(name) if name in have else 'NULL'} AS {dtype}) AS {quote(name)}"
        for name, dtype in columns)
    return f"SELECT {select} FROM ({read})"


def publish(ctx: StepContext, config: PublishConfig, query: str,
            groups: list[tuple[int, list[str]]], uri: str, facts: VersionFacts,
            stats_fn: Any, rows: int) -> PublishResult:
    """Fan the write tasks out under the dataset's turn (their files' schema and
    partitioning planned there, from the table as it is), then commit once.

    With statistics wanted, each task watches its rows as they are written and keeps a
    sample of ``SAMPLE_ROWS`` / tasks rows (all of them for a small version, ``rows``
    being the input's count), so the server computes the version's statistics from that
    sample and the shares' exact facts instead of reading the files again.
    """
    from headwater.datasets.publish import publish_parts
    from headwater.datasets.version_stats import SAMPLE_ROWS

    assert ctx.fan_out is not None
    con = ctx.cursor()
    rel = con.sql(f"SELECT * FROM {quote(INPUT_VIEW)}")
    columns = tuple(zip(rel.columns, (str(t) for t in rel.types), strict=True))
    rows_schema = con.sql(f"SELECT * FROM ({query}) LIMIT 0").to_arrow_table().schema
    prefix = f"hw-{ctx.run_seq}-{uuid.uuid4().hex[:8]}"
    sample_rows = None if stats_fn is None else (
        SAMPLE_ROWS if rows <= SAMPLE_ROWS else max(SAMPLE_ROWS // len(groups), 1))
    fan_out = ctx.fan_out

    def write(plan: Plan) -> tuple[list[Part], StreamStats | None]:
        task = WriteTask(query=query, columns=columns, schema=plan.schema, uri=uri,
                         partition_by=plan.partition_by, prefix=prefix,
                         sample_rows=sample_rows, sample_dir=str(ctx.workdir))
        written: list[Written] = fan_out(functools.partial(write_share, task), groups)
        ctx.log(f"wrote the version's files in {len(groups)} tasks on the cluster",
                tasks=len(groups))
        shares = [w.stats for w in written if w.stats is not None]
        stream = combined_stats(shares, plan.schema, SAMPLE_ROWS) \
            if sample_rows is not None and len(shares) == len(written) else None
        return [part for w in written for part in w.parts], stream

    return publish_parts(ctx.project.store, config.dataset, uri, write, facts,
                         schema=rows_schema, partition_by=config.partition_by,
                         evolve=config.schema_ == "evolve", stats_fn=stats_fn)
