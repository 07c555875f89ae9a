"""``headwater test``: render the results of :mod:`headwater.testing.run` on a terminal.

Kept apart from ``cli/main.py`` (which maps every other command) because the diff tables
are the one rich rendering this command needs; the judging itself lives in the core.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

SHOWN = 10
"""Rows shown per kind of difference; the summary line counts all of them."""


def _table(title: str, rows: list[dict[str, str]], columns: list[str]) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_lines=False)
    for column in columns:
        table.add_column(column)
    for row in rows[:SHOWN]:
        table.add_row(*(row.get(c, "") for c in columns))
    if len(rows) > SHOWN:
        table.add_row(*([f"... {len(rows) - SHOWN} more"] + [""] * (len(columns) - 1)))
    return table


def _changed_table(pairs: list[tuple[dict[str, str], dict[str, str]]]) -> Any:
    from rich.table import Table

    from headwater.testing.compare import same

    table = Table(title="changed", title_justify="left")
    for column in ("column", "expected", "actual", "row"):
        table.add_column(column)
    for expected, actual in pairs[:SHOWN]:
        first = ", ".join(f"{k}={v}" for k, v in list(expected.items())[:2])
        for column, value in expected.items():
            if not same(value, actual.get(column, "")):
                table.add_row(column, value, actual.get(column, ""), first)
    return table


def _render(results: list[Any], out: Any) -> None:
    for r in results:
        mark = "[green]PASS[/green]" if r.ok else "[red]FAIL[/red]"
        out.print(f"{mark} {r.case.id} ({r.seconds:.1f}s)")
        for note in r.notes:
            out.print(f"     note: {note}")
        for path in r.updated:
            out.print(f"     updated {path}")
        if r.ok:
            continue
        out.print(f"     {r.error}", markup=False, highlight=False)
        for diff in r.diffs:
            columns = list((diff.missing or diff.unexpected or [{}])[0].keys())
            if diff.missing:
                out.print(_table(f"{diff.dataset}: missing", diff.missing, columns))
            if diff.unexpected:
                out.print(_table(f"{diff.dataset}: unexpected", diff.unexpected, columns))
            if diff.changed:
                out.print(_changed_table(diff.changed))


def test_command(
    target: Annotated[str | None, typer.Argument(
        help="A pipeline, or PIPELINE/CASE; default: every case.")] = None,
    update: Annotated[bool, typer.Option(
        "--update", help="Rewrite the row expectations from this run (review the diff).")]
    = False,
    junit: Annotated[Path | None, typer.Option(
        "--junit", help="Also write a JUnit XML report to this file.")] = None,
    project: Annotated[Path | None, typer.Option(
        "--project", "-P", help="Project folder (default: the current folder or a parent).")]
    = None,
) -> None:
    """Run the pipeline test cases under tests/<pipeline>/<case>/ in a sandbox."""
    from rich.console import Console

    from headwater.project import Project
    from headwater.testing.run import run_tests, write_junit

    with Project(project) as proj:
        results = run_tests(proj, target, update=update)
    out = Console(highlight=False)
    if not results:
        out.print("no test cases (add tests/<pipeline>/<case>/ with inputs/ and expected/)")
    _render(results, out)
    if junit is not None:
        write_junit(results, junit)
    failed = sum(1 for r in results if not r.ok)
    sys.stdout.flush()
    out.print(f"{len(results) - failed} passed, {failed} failed", markup=False)
    if failed:
        raise typer.Exit(1)
