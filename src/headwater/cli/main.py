"""The ``headwater`` command: a thin map from words to :mod:`headwater.project` functions.

Exit codes (SPEC §4): 0 success, 1 a run failed, 2 a usage or project error. Heavy
libraries are imported inside commands so ``headwater --help`` and small commands start
fast. Errors print one actionable message to stderr, never a traceback, never a secret.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from headwater.cli.output import RunPrinter, print_json, resolve_log_format

app = typer.Typer(name="headwater", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False,
                  help="Data ingestion for machine learning: extract, prepare, validate and "
                       "publish versioned datasets.")
dataset_app = typer.Typer(no_args_is_help=True, help="Inspect one dataset.")
app.add_typer(dataset_app, name="dataset")

ProjectOpt = Annotated[Path | None, typer.Option(
    "--project", "-P", help="Project folder (default: the current folder or a parent).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON document on stdout.")]
LogFormatOpt = Annotated[str | None, typer.Option(
    "--log-format", help="human or json (default: human on a terminal, json elsewhere).")]

F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int) -> None:
    from headwater.config.secrets import REDACTOR

    sys.stderr.write(f"error: {REDACTOR(message)}\n")
    raise typer.Exit(code)


def handled(func: F) -> F:
    """Turn headwater errors into a message and the contract's exit code."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from headwater.exceptions import HeadwaterError

        try:
            return func(*args, **kwargs)
        except HeadwaterError as exc:
            _fail(exc.message, exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)

    return wrapper  # type: ignore[return-value]


def _project(path: Path | None) -> Any:
    from headwater.project import Project

    return Project(path)


def _parse_params(values: list[str] | None) -> dict[str, str]:
    out = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            _fail(f"-p expects key=value, got {item!r}", 2)
        out[key.strip()] = value
    return out


# --------------------------------------------------------------------------- project


@app.command()
@handled
def init(directory: Annotated[Path, typer.Argument(help="Where to create the project.")]
         = Path("."),
         force: Annotated[bool, typer.Option(help="Write into a non-empty folder.")] = False,
         ) -> None:
    """Scaffold the example project, with freshly generated sample data."""
    from headwater.scaffold.init import scaffold

    created = scaffold(directory, force=force)
    sys.stdout.write(f"created project in {created}\n"
                     f"next: cd {created} && headwater run orders\n")


@app.command()
@handled
def check(project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """Validate the project; every error names file, line and key."""
    proj = _project(project)
    found = proj.check()
    problems = [p for p in found if p.get("level") != "warning"]
    if json_:
        print_json({"ok": not problems, "problems": found})
    else:
        for p in found:
            where = f"{p['file']}:{p['line']}" if p.get("line") else p.get("file", "")
            key = f" {p['key']}:" if p.get("key") else ""
            level = " warning:" if p.get("level") == "warning" else ""
            sys.stderr.write(f"{where}:{level}{key} {p['message']}\n")
    if not problems and not json_:
        sys.stdout.write(f"ok: {len(proj.pipelines())} pipelines in {proj.root}\n")
    if problems:
        raise typer.Exit(2)


@app.command()
def schema(kind: Annotated[str, typer.Argument(help="pipeline or project")] = "pipeline",
           ) -> None:
    """Print the JSON Schema of pipeline (or project) files, for editors."""
    from headwater.config.schema import render

    if kind not in ("pipeline", "project"):
        _fail("schema kind must be 'pipeline' or 'project'", 2)
    sys.stdout.write(render(kind))


# --------------------------------------------------------------------------- runs


def _finish_run(run: Any, json_: bool) -> None:
    if json_:
        print_json(run.as_dict())
    elif run.ok:
        published = [s.info for s in run.steps if s.info.get("dataset")]
        for info in published:
            if info.get("version"):
                sys.stdout.write(f"published {info['dataset']} version {info['version']} "
                                 f"(+{info['rows_added']} rows)\n")
            else:
                sys.stdout.write(f"{info['dataset']}: {info.get('skipped')}\n")
        sys.stdout.write(f"run {run.id} succeeded\n")
    else:
        sys.stderr.write(f"error: run {run.id} {run.status}: {run.error}\n")
    if not run.ok:
        raise typer.Exit(1)


@app.command()
@handled
def run(pipeline: str,
        param: Annotated[list[str] | None, typer.Option("--param", "-p",
                                                        help="k=v (repeatable).")] = None,
        from_step: Annotated[str | None, typer.Option(help="Start at this step, reusing "
                                                           "earlier outputs.")] = None,
        project: ProjectOpt = None, json_: JsonOpt = False, log_format: LogFormatOpt = None,
        ) -> None:
    """Run a pipeline now and wait for it."""
    proj = _project(project)
    printer = RunPrinter(resolve_log_format(log_format), quiet=json_)
    result = proj.run(pipeline, _parse_params(param), from_step=from_step, observer=printer)
    _finish_run(result, json_)


@app.command()
@handled
def rerun(run_id: str,
          from_failed: Annotated[bool, typer.Option("--from-failed",
                                                    help="Reuse the steps that succeeded.")]
          = False,
          project: ProjectOpt = None, json_: JsonOpt = False, log_format: LogFormatOpt = None,
          ) -> None:
    """Run a finished run again (same params)."""
    proj = _project(project)
    printer = RunPrinter(resolve_log_format(log_format), quiet=json_)
    _finish_run(proj.rerun(run_id, from_failed=from_failed, observer=printer), json_)


@app.command()
@handled
def cancel(run_id: str, project: ProjectOpt = None) -> None:
    """Cancel a queued or running run."""
    state = _project(project).cancel(run_id)
    sys.stdout.write(f"{run_id}: {state}\n")


@app.command()
@handled
def runs(pipeline: Annotated[str | None, typer.Argument()] = None,
         limit: Annotated[int, typer.Option("--limit", "-n")] = 20,
         project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """List recent runs."""
    items = _project(project).runs(pipeline, limit)
    if json_:
        print_json([{k: v for k, v in r.as_dict().items() if k != "steps"} for r in items])
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("run", "pipeline", "status", "trigger", "started", "seconds", "error")
    for r in items:
        secs = (r.finished_at - r.started_at).total_seconds() \
            if r.finished_at and r.started_at else None
        table.add_row(r.id, r.pipeline, _status(r.status), r.trigger,
                      r.started_at.strftime("%Y-%m-%d %H:%M:%S") if r.started_at else "",
                      f"{secs:.2f}" if secs is not None else "", (r.error or "")[:80])
    Console().print(table)


def _status(status: str) -> str:
    color = {"succeeded": "green", "failed": "red", "running": "cyan",
             "cancelled": "yellow", "queued": "blue"}.get(status, "white")
    return f"[{color}]{status}[/{color}]"


@app.command()
@handled
def logs(run_id: str, project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """Show a run's log lines (and its steps' outcomes)."""
    proj = _project(project)
    lines = proj.logs(run_id)
    if json_:
        print_json([{"ts": r["ts"].isoformat(), "level": r["level"], "step_id": r["step_id"],
                     "message": r["message"], "fields": r["fields"]} for r in lines])
        return
    for r in lines:
        step = f"/{r['step_id']}" if r["step_id"] else ""
        sys.stdout.write(f"{r['ts']:%H:%M:%S} {r['level'].upper():7} [{step or '-'}] "
                         f"{r['message']}\n")
    run_ = proj.get_run(run_id)
    for s in run_.steps:
        extra = f" — {s.error}" if s.error else ""
        sys.stdout.write(f"step {s.step_id}: {s.status}{extra}\n")


# --------------------------------------------------------------------------- datasets


@app.command()
@handled
def datasets(project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """List the published datasets with their newest version."""
    items = _project(project).datasets()
    if json_:
        print_json(items)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("dataset", "version", "rows", "pipeline", "updated", "uri")
    for d in items:
        table.add_row(d["name"], str(d["version"]), str(d["rows"]), d["pipeline"] or "",
                      (d["updated_at"] or "")[:19], d["uri"])
    Console().print(table)


@dataset_app.command("show")
@handled
def dataset_show(name: str, version: Annotated[int | None, typer.Option("--version", "-v")]
                 = None, project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """A dataset version: lineage facts, schema, statistics and drift."""
    from headwater.cli.show import show_dataset

    show_dataset(_project(project), name, version, json_)


@dataset_app.command("preview")
@handled
def dataset_preview(name: str, n: Annotated[int, typer.Option("-n")] = 20,
                    version: Annotated[int | None, typer.Option("--version", "-v")] = None,
                    project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """The first rows of a dataset version."""
    from headwater.cli.show import preview_dataset

    preview_dataset(_project(project), name, version, n, json_)


@dataset_app.command("diff")
@handled
def dataset_diff(name: str, a: int, b: int, project: ProjectOpt = None,
                 json_: JsonOpt = False) -> None:
    """Rows added, removed and changed between versions A and B, and schema changes."""
    from headwater.cli.show import diff_dataset

    diff_dataset(_project(project), name, a, b, json_)


@app.command()
@handled
def lineage(target: Annotated[str, typer.Argument(help="NAME or NAME@VERSION")],
            project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """Which runs, code and sources made a dataset version, and what used it."""
    from headwater.cli.show import show_lineage

    name, _, version = target.partition("@")
    if version and not version.isdigit():
        _fail(f"version must be a number in {target!r}", 2)
    show_lineage(_project(project), name, int(version) if version else None, json_)


# --------------------------------------------------------------------------- server


@app.command()
@handled
def serve(host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="Port of the UI and API.")] = 8765,
          worker: Annotated[str | None, typer.Option(help="This server's name in the store "
                                                          "(default host:pid).")] = None,
          project: ProjectOpt = None) -> None:
    """Run triggers, the run queue, the runner and the API until stopped (SIGTERM)."""
    import logging

    from headwater.server.service import ServerOptions
    from headwater.server.service import serve as run_server

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    options = ServerOptions(host=host, port=port)
    if worker:
        options.worker = worker
    sys.stderr.write(f"headwater serving on http://{host}:{port} (API at /api, "
                     f"metrics at /metrics); Ctrl-C to stop\n")
    run_server(project, options)


triggers_app = typer.Typer(help="List triggers, or enable/disable one.",
                           invoke_without_command=True)
app.add_typer(triggers_app, name="triggers")


@triggers_app.callback()
@handled
def triggers(ctx: typer.Context, project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """Every trigger with its state, last and next fire time."""
    if ctx.invoked_subcommand is not None:
        return
    from headwater.triggers.registry import trigger_table

    rows = trigger_table(_project(project).runtime)
    if json_:
        print_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("trigger", "kind", "enabled", "last fired", "next", "error")
    for r in rows:
        table.add_row(r["id"], r["kind"], "yes" if r["enabled"] else "[yellow]no[/yellow]",
                      (r["last_fired_at"] or "")[:19], (r["next_fire_at"] or "")[:19],
                      f"[red]{r['error']}[/red]" if r["error"] else "")
    Console().print(table)


def _toggle(target: str, enabled: bool, project: Path | None) -> None:
    from headwater.store.queue import save_trigger_state

    proj = _project(project)
    name, _, index = target.partition(".")
    pf = proj.runtime.pipeline(name)
    indexes = [int(index)] if index else list(range(len(pf.config.triggers)))
    for i in indexes:
        if not 0 <= i < len(pf.config.triggers):
            _fail(f"pipeline {name!r} has no trigger {i} (it has "
                  f"{len(pf.config.triggers)})", 2)
        save_trigger_state(proj.runtime.store, name, i, pf.config.triggers[i].kind,
                           enabled=enabled)
        sys.stdout.write(f"{name}.{i} {'enabled' if enabled else 'disabled'}\n")


@triggers_app.command("disable")
@handled
def triggers_disable(target: Annotated[str, typer.Argument(help="PIPELINE[.INDEX]")],
                     project: ProjectOpt = None) -> None:
    """Stop a trigger (or all of a pipeline's) from firing."""
    _toggle(target, False, project)


@triggers_app.command("enable")
@handled
def triggers_enable(target: Annotated[str, typer.Argument(help="PIPELINE[.INDEX]")],
                    project: ProjectOpt = None) -> None:
    """Let a disabled trigger fire again."""
    _toggle(target, True, project)


@app.command()
@handled
def backfill(pipeline: str,
             start: Annotated[str, typer.Option("--start", help="ISO time, e.g. 2026-11-01")],
             end: Annotated[str, typer.Option("--end", help="ISO time; windows ending by then")],
             concurrency: Annotated[int, typer.Option(help="Windows run at once.")] = 1,
             queue_only: Annotated[bool, typer.Option("--queue-only", help="Only queue the "
                                                      "runs for a server.")] = False,
             project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """Run each window of the pipeline's schedule in a range once (skipping done ones)."""
    from datetime import UTC, datetime

    from headwater.server.backfill import backfill as do_backfill

    def parse(text: str) -> datetime:
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            _fail(f"not an ISO time: {text!r}", 2)
            raise
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    proj = _project(project)
    result = do_backfill(proj.runtime, pipeline, parse(start), parse(end),
                         concurrency=concurrency, execute=not queue_only)
    if json_:
        print_json(result)
    else:
        sys.stdout.write(f"{pipeline}: {result['windows']} windows, {result['skipped']} "
                         f"already done, {len(result['queued'])} queued\n")
        for run_id, status in result["statuses"].items():
            sys.stdout.write(f"  {run_id} {status}\n")
    if any(s != "succeeded" for s in result["statuses"].values()):
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point."""
    import logging

    logging.getLogger("openlineage").setLevel(logging.WARNING)
    code = 0
    try:
        app()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (1 if exc.code else 0)
    # Leave without the interpreter's teardown: native libraries (delta-rs's object-store
    # runtime, deltalake#2184) can abort while unloading, which would replace the true exit
    # code; and a step thread that ignored its timeout would be waited for forever. Every
    # state change is already committed, so nothing is lost by skipping atexit.
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
