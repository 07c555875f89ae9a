"""Run test cases and judge them: the command function behind ``headwater test``.

Each case runs in its own sandbox (:mod:`headwater.testing.sandbox`) through the same
Python API a user calls, then every published dataset is read back and compared with the
case's expectations. ``update`` rewrites the row expectations from what was published,
for a reviewer to read as a diff. Nothing here prints: the CLI renders the results.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree as ET

from headwater.exceptions import ConfigError, NotFoundError
from headwater.testing import compare
from headwater.testing.cases import Case, Expectation, discover
from headwater.testing.sandbox import CASE_DIR, build, open_store, store_engine, store_template

if TYPE_CHECKING:
    from sqlalchemy import Engine


@dataclass
class CaseResult:
    """The verdict on one case."""

    case: Case
    ok: bool = True
    error: str | None = None
    run_id: str | None = None
    diffs: list[compare.Diff] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def fail(self, message: str) -> None:
        self.ok = False
        self.error = f"{self.error}; {message}" if self.error else message


def run_tests(project: Any, only: str | None = None, *, update: bool = False) -> list[CaseResult]:
    """Run every case of ``project`` (a :class:`headwater.Project`), or those of ``only``."""
    if only and only.partition("/")[0] not in project.runtime.pipelines:
        project.runtime.pipeline(only.partition("/")[0])  # raises with a suggestion
    cases = discover(project.root, list(project.runtime.pipelines), only)
    if not cases:
        return []
    with tempfile.TemporaryDirectory(prefix="hw-test-") as tmp:
        template = store_template(Path(tmp))
        workdir = Path(tmp) / "sandbox"
        engine = store_engine(workdir)
        try:
            results = []
            for case in cases:
                pf = project.runtime.pipeline(case.pipeline)
                results.append(run_case(project.root, case, pf.config, update=update,
                                        pipeline_file=pf.path, template=template,
                                        workdir=workdir, engine=engine))
            return results
        finally:
            engine.dispose()


def _published(pipeline: Any) -> dict[str, list[str] | None]:
    """dataset → merge key (None when rows have no key) of every publish step."""
    from headwater.config.models import PublishStep

    out: dict[str, list[str] | None] = {}
    for step in pipeline.steps:
        if isinstance(step, PublishStep):
            cfg = step.publish
            out[cfg.dataset] = list(cfg.key) if cfg.mode == "merge" and cfg.key else None
    out[f"{pipeline.name}__rejected"] = None
    return out


def _published_twice(pipeline: Any) -> bool:
    """Whether two publish steps write one dataset: the second then has a previous version
    in the sandbox, whose statistics its drift check needs."""
    from headwater.config.models import PublishStep

    names = [s.publish.dataset for s in pipeline.steps if isinstance(s, PublishStep)]
    return len(names) != len(set(names))


def run_case(root: Path, case: Case, pipeline: Any, *, update: bool = False,
             pipeline_file: Path | None = None, template: Path | None = None,
             workdir: Path | None = None, engine: Engine | None = None) -> CaseResult:
    """Run one case in a fresh sandbox and judge it.

    ``pipeline_file`` and ``template`` only save time (see
    :func:`headwater.testing.sandbox.build`); so does ``workdir``, a folder emptied after
    the case: sandboxes built at one path are confined to the same directories, so each
    case reuses the pooled DuckDB database of the one before instead of opening one; and
    ``engine`` (:func:`headwater.testing.sandbox.store_engine` of ``workdir``; used with a
    ``template``) opens the case's own store with the statements earlier cases compiled.
    """
    from headwater.project import Project

    result = CaseResult(case)
    started = time.perf_counter()
    published = _published(pipeline)
    expectations = case.expectations()
    for exp in expectations:
        if exp.dataset not in published:
            raise ConfigError(
                f"{exp.path}: pipeline {case.pipeline!r} does not publish dataset "
                f"{exp.dataset!r} (it publishes: {', '.join(sorted(published))})", problems=[])
    with _sandbox_dir(workdir) as tmp:
        copy = build(root, case, tmp, pipeline_file=pipeline_file, store_template=template)
        fixtures = str(tmp / CASE_DIR)
        store = open_store(tmp, engine) if template is not None else None  # migrated
        with Project(copy, store=store) as sandbox:
            sandbox.runtime.version_stats = _published_twice(pipeline)
            run = sandbox.run(case.pipeline, params=case.params)
            result.run_id = run.id
            error = (run.error or "").replace(fixtures, str(case.folder))  # the user's files
            if case.expected_error is not None:
                _judge_failure(result, run.ok, error, case.expected_error)
            elif not run.ok:
                result.fail(f"run {run.status}: {error}")
            else:
                _judge_datasets(result, sandbox, case, expectations, published, update,
                                fixtures + "/")
    result.seconds = time.perf_counter() - started
    return result


@contextmanager
def _sandbox_dir(workdir: Path | None) -> Iterator[Path]:
    """``workdir`` (created, and removed afterwards), or a new temporary folder."""
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="hw-test-") as tmp:
            yield Path(tmp)
        return
    workdir.mkdir(parents=True)
    try:
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _judge_failure(result: CaseResult, ok: bool, error: str, expected_error: str) -> None:
    if ok:
        result.fail(f"expected the run to fail with {expected_error!r}, but it succeeded")
    elif expected_error not in error:
        result.fail(f"expected an error containing {expected_error!r}, got: {error}")


def _published_table(sandbox: Any, dataset: str) -> Any:
    """The newest rows of ``dataset`` as an Arrow table, or None if nothing was published.

    Read straight from the Delta table the case's run committed, opened once: going through
    ``Project.dataset`` first reconciles the store with the Delta log (crash repair, which
    a sandbox whose only run just finished never needs) and then opens the table again;
    the two opens were ~5 % of a suite of small cases.
    """
    from headwater.datasets import delta

    try:
        uri = str(sandbox.runtime.store.dataset(dataset)["uri"])
    except NotFoundError:
        return None
    table = delta.open_table(uri)
    return None if table is None else delta.read_arrow(table)


def _judge_datasets(result: CaseResult, sandbox: Any, case: Case,
                    expectations: list[Expectation], published: dict[str, list[str] | None],
                    update: bool, strip: str) -> None:
    by_name = {e.dataset: e for e in expectations}
    for dataset, key in published.items():
        exp = by_name.get(dataset)
        table = _published_table(sandbox, dataset)
        # the fixture folder is cut from text values: ``_source`` reads inputs/raw.csv:4
        actual = compare.rows_of(table, strip=strip) if table is not None else ([], [])
        if exp is not None and exp.rows_file is None:
            _judge_summary(result, table, dataset, exp, actual)
            continue
        if update:
            if exp is not None or actual[1] or not dataset.endswith("__rejected"):
                target = exp.rows_file if exp else case.expected_dir / f"{dataset}.csv"
                assert target is not None
                compare.write_rows(target, actual[0], actual[1])
                result.updated.append(str(target.relative_to(case.folder)))
            continue
        if exp is None:
            if actual[1] and not dataset.endswith("__rejected"):
                result.notes.append(f"{dataset}: no expectation (run with --update)")
            elif actual[1]:
                result.fail(f"{dataset}: {len(actual[1])} rejected row(s) but no "
                            f"expected/{dataset}.csv")
            continue
        assert exp.rows_file is not None
        expected = compare.read_rows(exp.rows_file)
        if not actual[0] and not expected[1]:
            continue  # nothing published, nothing expected
        diff = compare.diff_rows(dataset, expected, actual, key)
        if not diff.ok:
            result.diffs.append(diff)
            result.fail(diff.summary())


def _judge_summary(result: CaseResult, table: Any, dataset: str, exp: Expectation,
                   actual: tuple[list[str], list[compare.Row]]) -> None:
    """``<dataset>.yaml``: row count, column types and SQL checks over the rows."""
    if exp.row_count is not None and exp.row_count != len(actual[1]):
        result.fail(f"{dataset}: expected {exp.row_count} rows, got {len(actual[1])}")
    if not actual[0]:
        return
    if exp.schema is not None:
        got = {f.name: str(f.type) for f in table.schema}
        for column, dtype in exp.schema.items():
            if got.get(column) != dtype:
                result.fail(f"{dataset}: column {column!r} expected {dtype}, got "
                            f"{got.get(column, 'no such column')}")
    if exp.checks:
        import duckdb

        with duckdb.connect() as con:
            con.register("rows", table)
            for check in exp.checks:
                try:
                    bad = con.sql(f"SELECT count(*) FROM rows WHERE NOT ({check})").fetchall()
                except duckdb.Error as exc:
                    raise ConfigError(f"{exp.path}: checks: {check!r} is not valid SQL: "
                                      f"{str(exc).splitlines()[0]}", problems=[]) from None
                if bad[0][0]:
                    result.fail(f"{dataset}: {bad[0][0]} row(s) fail check {check!r}")


def write_junit(results: list[CaseResult], path: Path) -> None:
    """A JUnit XML report (one testsuite, a testcase per case) for CI systems."""
    failures = sum(1 for r in results if not r.ok)
    suite = ET.Element("testsuite", name="headwater", tests=str(len(results)),
                       failures=str(failures), time=f"{sum(r.seconds for r in results):.3f}")
    for r in results:
        case = ET.SubElement(suite, "testcase", classname=r.case.pipeline, name=r.case.name,
                             time=f"{r.seconds:.3f}")
        if not r.ok:
            failure = ET.SubElement(case, "failure", message=r.error or "failed")
            failure.text = "\n".join([r.error or "", *(d.summary() for d in r.diffs)])
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
