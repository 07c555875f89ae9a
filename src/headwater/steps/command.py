"""``command`` steps: run a process (a training script, say); its output is the step log.

Templates are rendered into the command line; a list runs without a shell, a string
through ``/bin/sh`` with every template value shell-quoted, so a param is one argument and
never shell code. A non-zero exit fails the step with the exit code and the last lines
of output; a timeout or cancel kills the whole process group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections import deque

from headwater.config.models import CommandStep
from headwater.config.secrets import resolve
from headwater.config.templates import render_shell
from headwater.exceptions import StepError
from headwater.steps.base import StepContext, StepOutput, register

_LIVE: dict[int, subprocess.Popen[str]] = {}
"""pid → command children running now (each leads its own process group)."""
_LIVE_LOCK = threading.Lock()


@register("command")
def run_command(ctx: StepContext, step: CommandStep) -> StepOutput:
    try:
        argv = _argv(ctx, step)
        env = {**os.environ, **_env(ctx, step),
               "HEADWATER_RUN_ID": ctx.run_id, "HEADWATER_STEP_ID": ctx.step_id}
    except ValueError as exc:
        raise StepError(str(exc)) from None
    cwd = ctx.project.root / step.cwd if step.cwd else ctx.project.root
    with subprocess.Popen(argv, shell=isinstance(argv, str), cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace", start_new_session=True) as proc:
        on_interrupt = getattr(ctx, "on_interrupt", None)
        if on_interrupt is not None:
            on_interrupt(lambda: _kill(proc))
        with _LIVE_LOCK:
            _LIVE[proc.pid] = proc
        try:
            tail: deque[str] = deque(maxlen=20)
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                ctx.log(line, stream="output")
            code = proc.wait()
        finally:
            with _LIVE_LOCK:
                _LIVE.pop(proc.pid, None)
    if code != 0:
        last = " | ".join(list(tail)[-3:])
        raise StepError(f"command exited with code {code}" + (f": {last}" if last else ""))
    return StepOutput(info={"exit_code": code})


def _argv(ctx: StepContext, step: CommandStep) -> str | list[str]:
    """The command line: a string for ``/bin/sh`` with every template value shell-quoted
    (a param ``"hi; touch FILE"`` stays one word), or an argv list run without a shell."""
    if isinstance(step.command, str):
        return render_shell(step.command, ctx.template_vars)
    return [ctx.render(part) for part in step.command]


def _env(ctx: StepContext, step: CommandStep) -> dict[str, str]:
    """``env:`` values rendered, with ``${env:}``/``${file:}`` references resolved (and
    their values masked in the step's log like every other secret)."""
    return {key: resolve(ctx.render(value), ctx.project.root)
            for key, value in step.env.items()}


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def kill_running() -> int:
    """Kill the process group of every command this process is running; how many.

    A server that gives up on its runs at shutdown (and queues them again) calls this
    first: otherwise the child, a training say, keeps running and the resumed run starts
    a second one beside it.
    """
    with _LIVE_LOCK:
        procs = list(_LIVE.values())
    for proc in procs:
        _kill(proc)
    return len(procs)
