"""How the CLI shows things: JSON on stdout, progress and logs on stderr.

On a terminal a run shows a live Rich progress display and human log lines; in a pipe it
prints plain lines (``--log-format human``) or JSON lines (``--log-format json``, the
default off a terminal), each carrying run id and step id. ``--json`` documents always go
to stdout alone so they can be piped into ``jq``. Secrets are masked before printing.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from headwater.config.secrets import REDACTOR


def print_json(document: Any) -> None:
    text = json.dumps(REDACTOR.deep(document), indent=2, default=str)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def is_terminal() -> bool:
    return sys.stderr.isatty()


def resolve_log_format(value: str | None) -> str:
    if value in ("human", "json"):
        return value
    return "human" if is_terminal() else "json"


class RunPrinter:
    """Observer for a run: Rich live progress on a terminal, plain or JSON lines elsewhere."""

    def __init__(self, log_format: str, quiet: bool = False) -> None:
        self.log_format = log_format
        self.quiet = quiet
        self.run_id: str | None = None
        self.progress: Any = None
        self.task: Any = None
        self.total = 0
        self.done = 0
        if is_terminal() and log_format == "human" and not quiet:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                     TextColumn("{task.completed}/{task.total} steps"),
                                     TimeElapsedColumn(), console=Console(stderr=True),
                                     transient=True)

    def __call__(self, event: str, fields: Mapping[str, Any]) -> None:
        handler = getattr(self, f"_on_{event}", None)
        if handler is not None:
            handler(fields)

    def _line(self, level: str, message: str, step_id: str | None = None,
              **extra: Any) -> None:
        if self.quiet and level not in ("error", "warning"):
            return
        message = REDACTOR(message)
        if self.log_format == "json":
            record = {"ts": datetime.now(UTC).isoformat(), "level": level,
                      "run_id": self.run_id, "step_id": step_id, "message": message}
            record.update({k: v for k, v in extra.items() if v is not None})
            sys.stderr.write(json.dumps(REDACTOR.deep(record), default=str) + "\n")
        else:
            where = f"[{self.run_id}{'/' + step_id if step_id else ''}]"
            text = f"{level.upper():7} {where} {message}"
            if self.progress is not None:
                self.progress.console.print(text, markup=False, highlight=False)
            else:
                sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def _on_run_started(self, f: Mapping[str, Any]) -> None:
        self.run_id = f["run_id"]
        self.total = len(f["steps"])
        if self.progress is not None:
            self.progress.start()
            self.task = self.progress.add_task(f"{f['pipeline']} {self.run_id}",
                                               total=self.total)
        self._line("info", f"run {f['run_id']} of {f['pipeline']} started "
                           f"({self.total} steps)", pipeline=f["pipeline"])

    def _on_step_started(self, f: Mapping[str, Any]) -> None:
        attempt = f" (attempt {f['attempt']})" if f.get("attempt", 1) > 1 else ""
        self._line("info", f"step {f['step_id']} started{attempt}", f["step_id"])

    def _on_step_finished(self, f: Mapping[str, Any]) -> None:
        status = f["status"]
        rows = f" rows={f['rows']}" if f.get("rows") is not None else ""
        secs = f" in {f.get('seconds') or 0:.2f}s"
        if status == "failed":
            self._line("error", f"step {f['step_id']} failed{secs}: {f.get('error')}",
                       f["step_id"])
            return
        self.done += 1
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, completed=self.done)
        self._line("info", f"step {f['step_id']} {status}{secs}{rows}", f["step_id"],
                   rows=f.get("rows"))

    def _on_log(self, f: Mapping[str, Any]) -> None:
        self._line(f["level"], f["message"], f.get("step_id"), **(f.get("fields") or {}))

    def _on_run_finished(self, f: Mapping[str, Any]) -> None:
        if self.progress is not None:
            self.progress.stop()
        level = "info" if f["status"] == "succeeded" else "error"
        message = f"run {f['run_id']} {f['status']}"
        if f.get("error"):
            message += f": {f['error']}"
        self._line(level, message)
