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
                       "publish versioned datasets. Every command takes --env NAME (or "
                       "HEADWATER_ENV) to apply an environment from headwater.yaml.")
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
         force: Annotated[bool, typer.Option(help="Write into a non-empty folder (with --ci "
                                                  "on a project: overwrite the CI file).")]
         = False,
         ci: Annotated[str | None, typer.Option(
             "--ci", help="Also write a CI/CD pipeline: github (.github/workflows/"
                          "headwater.yml) or azure (azure-pipelines.yml). On an existing "
                          "project only that file is written.")] = None,
         ) -> None:
    """Scaffold the example project, with freshly generated sample data."""
    from headwater.scaffold.ci import RENDER, write_ci
    from headwater.scaffold.init import scaffold

    if ci is not None and ci not in RENDER:
        _fail(f"--ci must be one of {', '.join(sorted(RENDER))}, not {ci!r}", 2)
    root = directory.resolve()
    if ci is not None and (root / "headwater.yaml").is_file():
        written = write_ci(root, ci, force=force)
        sys.stdout.write(f"wrote {written.relative_to(root)} in {root}\n")
        return
    created = scaffold(directory, force=force)
    if ci is not None:
        written = write_ci(created, ci, force=force)
        sys.stdout.write(f"wrote {written.relative_to(created)}\n")
    sys.stdout.write(f"created project in {created}\n"
                     f"next: cd {created} && headwater run orders\n")


@app.command()
@handled
def check(project: ProjectOpt = None, json_: JsonOpt = False,
          connections: Annotated[bool, typer.Option(
              "--connections", help="Also connect to each connection: reachable, "
                                    "authenticated, can read.")] = False) -> None:
    """Validate the project; every error names file, line and key."""
    proj = _project(project)
    found = proj.check()
    problems = [p for p in found if p.get("level") != "warning"]
    if connections:
        _check_connections(proj, problems, json_)
        return
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


def _check_connections(proj: Any, problems: list[dict[str, Any]], json_: bool) -> None:
    """One line per connection (secrets masked); exit 2 on project errors, 1 if one fails."""
    from headwater.config.secrets import REDACTOR

    reports = proj.check_connections()
    if json_:
        print_json({"ok": not problems and all(r["ok"] for r in reports),
                    "problems": problems, "connections": reports})
    else:
        for p in problems:
            where = f"{p['file']}:{p['line']}" if p.get("line") else p.get("file", "")
            sys.stderr.write(f"{where}: {p.get('key', '')}: {p['message']}\n")
        for report in reports:
            verdict = "ok" if report["ok"] else "FAILED"
            details = "; ".join(f"{c['what']}: {c['detail']}" for c in report["checks"])
            line = f"{report['connection']} ({report['type']}): {verdict}: {details}\n"
            (sys.stdout if report["ok"] else sys.stderr).write(REDACTOR(line))
        if not reports:
            sys.stdout.write("no connections in headwater.yaml\n")
    if problems:
        raise typer.Exit(2)
    if not all(r["ok"] for r in reports):
        raise typer.Exit(1)


@app.command()
def schema(kind: Annotated[str, typer.Argument(help="pipeline, project or reference")]
           = "pipeline") -> None:
    """Print the JSON Schema of pipeline (or project) files, for editors; 'reference' prints
    docs/reference.md (every YAML key and command) as Markdown."""
    from headwater.config.schema import render

    if kind == "reference":
        from headwater.cli.reference import render as render_reference

        sys.stdout.write(render_reference())
        return
    if kind not in ("pipeline", "project"):
        _fail("schema kind must be 'pipeline', 'project' or 'reference'", 2)
    sys.stdout.write(render(kind))


@app.command()
@handled
def plan(project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """What 'deploy' would change in the environment's store (--env); exit 3 if anything."""
    from headwater.deploy import plan as plan_changes

    proj = _project(project)
    changes = plan_changes(proj.runtime)
    env = proj.runtime.env or "(no environment)"
    if json_:
        print_json({"env": proj.runtime.env, "changes": [c.__dict__ for c in changes]})
    else:
        sys.stdout.write(f"plan for {env}:\n")
        for change in changes:
            sys.stdout.write(f"  {change.describe()}\n")
        sys.stdout.write(f"{len(changes)} change(s)" + (
            f"; 'headwater deploy{_env_flag(proj)}' applies them\n" if changes
            else ": nothing would change\n"))
    if changes:
        raise typer.Exit(3)


@app.command()
@handled
def deploy(project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """Record the project's pipelines as deployed (--env); running servers reload them."""
    from headwater.deploy import deploy as deploy_project

    proj = _project(project)
    changes, deployment = deploy_project(proj.runtime)
    if json_:
        print_json({"env": proj.runtime.env, "deployment": deployment,
                    "changes": [c.__dict__ for c in changes]})
        return
    for change in changes:
        sys.stdout.write(f"  {change.describe()}\n")
    sys.stdout.write(f"deployed {len(changes)} change(s) as deployment {deployment}\n"
                     if changes else "nothing to deploy: the store already has this code\n")


def _env_flag(proj: Any) -> str:
    return f" --env {proj.runtime.env}" if proj.runtime.env else ""


def _register_test_command() -> None:
    from headwater.cli.pipeline_tests import test_command

    app.command(name="test")(handled(test_command))


_register_test_command()


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
    for resumed in proj.finish_resumed(pipeline):
        sys.stderr.write(f"finished run {resumed} first: its process died after it began "
                         f"publishing\n")
    run_id = proj.queue(pipeline, _parse_params(param), from_step=from_step,
                        _status="running")
    _execute_interruptibly(proj, run_id, printer, json_)


def _execute_interruptibly(proj: Any, run_id: str, printer: RunPrinter, json_: bool) -> None:
    """Execute a created run; Ctrl-C/SIGTERM cancel it and the truth is printed."""
    from headwater.cli.interrupt import cancel_on_signals, describe

    with cancel_on_signals(proj.runtime.store, run_id) as interrupt:
        result = proj.execute(run_id, printer)
    if interrupt.signal is None:
        _finish_run(result, json_)
        return
    if json_:
        print_json(result.as_dict())
    versions = proj.runtime.store.versions_by_run(run_id)
    sys.stderr.write(describe(result, versions, interrupt.signal))
    raise typer.Exit(interrupt.exit_code)


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
    _execute_interruptibly(proj, proj.prepare_rerun(run_id, from_failed=from_failed), printer,
                           json_)


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
    # httpx logs every request URL at INFO: API polls would flood the log, and a query
    # string may carry a resolved secret (an api key in `params:`)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    options = ServerOptions(host=host, port=port)
    if worker:
        options.worker = worker

    def announce() -> None:  # once the port is bound and the project loaded
        sys.stderr.write(f"headwater serving on http://{host}:{port} (web UI at /, API at /api, "
                         f"metrics at /metrics); Ctrl-C to stop\n")

    options.on_ready = announce
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


token_app = typer.Typer(no_args_is_help=True, help="API and UI tokens.")
app.add_typer(token_app, name="token")


@token_app.command("create")
@handled
def token_create(role: Annotated[str, typer.Option(help="viewer (read) or operator (also run, "
                                                       "cancel, toggle, edit).")] = "viewer",
                 name: Annotated[str | None, typer.Option(help="A note: whose it is.")] = None,
                 days: Annotated[float | None, typer.Option(help="Expire after this many "
                                                             "days.")] = None,
                 project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """Make a token (shown once; the store keeps only its hash)."""
    from headwater.store.access import create_token

    made = create_token(_project(project).runtime.store, role, name=name, days=days)
    expires = made.expires_at.isoformat() if made.expires_at else None
    if json_:
        print_json({"id": made.id, "token": made.token, "role": made.role, "expires_at": expires})
        return
    sys.stdout.write(f"{made.token}\n")
    sys.stderr.write(f"{made.role} token {made.id} created"
                     + (f", expires {expires}" if expires else "")
                     + "; it is shown only now. Use it as 'Authorization: Bearer <token>' or "
                       "log in with it at /login.\n")


@token_app.command("revoke")
@handled
def token_revoke(token_id: str, project: ProjectOpt = None) -> None:
    """Revoke a token by the id 'token create' printed."""
    from headwater.store.access import revoke_token

    if not revoke_token(_project(project).runtime.store, token_id):
        _fail(f"no token {token_id!r}", 2)
    sys.stdout.write(f"token {token_id} revoked\n")


def take_env_option(args: list[str], environ: Any) -> list[str]:
    """Every command takes ``--env NAME``: it becomes ``HEADWATER_ENV`` for the project load.

    Taken out of the arguments before Typer sees them, so one rule covers every command
    (``headwater check --env prod``, ``headwater --env prod run orders``) identically.
    """
    out: list[str] = []
    rest = iter(args)
    for arg in rest:
        if arg == "--":
            out.extend(["--", *rest])
            break
        if arg == "--env" or arg.startswith("--env="):
            value = arg.partition("=")[2] if "=" in arg else next(rest, "")
            if not value or value.startswith("-"):
                sys.stderr.write("error: --env expects an environment name (see "
                                 "'environments:' in headwater.yaml)\n")
                raise SystemExit(2)
            environ["HEADWATER_ENV"] = value
            continue
        out.append(arg)
    return out


def main() -> None:
    """Console-script entry point."""
    import logging

    logging.getLogger("openlineage").setLevel(logging.WARNING)
    code = 0
    try:
        sys.argv[1:] = take_env_option(sys.argv[1:], os.environ)
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
