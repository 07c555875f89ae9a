"""``command`` steps: run a process (a training script, say); its output is the step log.

Templates are rendered into the command line; a list runs without a shell, a string
through ``/bin/sh``. A non-zero exit fails the step with the exit code and the last lines
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
from headwater.exceptions import StepError
from headwater.steps.base import StepContext, StepOutput, register

_LIVE: dict[int, subprocess.Popen[str]] = {}
"""pid → command children running now (each leads its own process group)."""
_LIVE_LOCK = threading.Lock()


@register("command")
def run_command(ctx: StepContext, step: CommandStep) -> StepOutput:
    if isinstance(step.command, str):
        argv: str | list[str] = ctx.render(step.command)
    else:
        argv = [ctx.render(part) for part in step.command]
    env = {**os.environ, **{k: ctx.render(v) for k, v in step.env.items()},
           "HEADWATER_RUN_ID": ctx.run_id, "HEADWATER_STEP_ID": ctx.step_id}
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
