"""Is the process executing a ``running`` run still alive? Answered at once on its host.

A heartbeat lease needs tens of seconds to expire; a run whose process died on this very
machine (kill -9, a crash, a closed terminal) is known dead the moment its pid is gone, so
it must not block its pipeline's next run, nor show ``running`` in ``headwater runs``.
Each run records ``host`` and ``pid``; other hosts still rely on the lease. Never import
the engine or the server from here.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import and_, select

from headwater.store import schema as t
from headwater.store.store import Store

HOST = socket.gethostname()
"""This machine's name as runs record it (``runs.host``)."""


def this_process() -> dict[str, Any]:
    """The ``host``/``pid`` columns of a run executed by this process."""
    return {"host": HOST, "pid": os.getpid()}


def process_alive(pid: int) -> bool:
    """True while ``pid`` names a live process on this host (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    stat = Path(f"/proc/{pid}/stat")
    try:
        # the state follows the parenthesised command name, which may contain spaces
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def is_dead(run: dict[str, Any]) -> bool:
    """A ``running`` run executed on this host by a process that no longer exists."""
    pid = run.get("pid")
    return (run.get("status") == "running" and run.get("host") == HOST and pid is not None
            and int(pid) != os.getpid() and not process_alive(int(pid)))


DIED = "its process died"
RESUMED_LOCAL = f"resumed after {DIED}"
"""The error a dead local run is queued again with (``Project.finish_resumed`` looks)."""


def reap_dead(store: Store, resumable: Callable[[str], bool] | None = None) -> list[str]:
    """End every ``running`` run of this host whose process died; returns their ids.

    A local run (``headwater run``, the Python API) is failed, naming its process, unless
    a publish step of it began and ``resumable(pipeline)`` says so
    (``ProjectRuntime.resumable``): then it is queued again, as a run a server was
    executing always is, and a server or the next ``headwater run`` of its pipeline
    finishes it first, so every dataset it publishes gets the same rows exactly once.
    """
    from headwater.store import queue

    with store.engine.connect() as conn:
        rows = conn.execute(select(t.runs.c.id, t.runs.c.status, t.runs.c.host, t.runs.c.pid,
                                   t.runs.c.worker, t.runs.c.pipeline).where(and_(
            t.runs.c.status == "running", t.runs.c.host == HOST))).all()
    dead = [dict(r._mapping) for r in rows if is_dead(dict(r._mapping))]
    for run in dead:
        local = str(run["worker"] or "").startswith("local:") or not run["worker"]
        if not local:
            queue.requeue_runs(store, [run["id"]], only_pid=run["pid"])
        elif resumable is not None and resumable(str(run["pipeline"])) and \
                _began_publishing(store, str(run["id"])):
            # a publish may have committed: only this run, resumed, can finish the others
            # exactly once (see headwater.project.Project.finish_resumed)
            queue.requeue_runs(store, [run["id"]], only_pid=run["pid"],
                               reason=f"{DIED} (pid {run['pid']} on {HOST})")
        else:
            queue.fail_unfinished(store, run["id"], f"its process died (pid {run['pid']} on "
                                  f"{HOST}) before the run ended", only_pid=run["pid"])
    return [str(r["id"]) for r in dead]


def _began_publishing(store: Store, run_id: str) -> bool:
    """Whether a publish step of the run started (its commit may be in the dataset)."""
    with store.engine.connect() as conn:
        return conn.execute(select(t.step_runs.c.id).where(and_(
            t.step_runs.c.run_id == run_id, t.step_runs.c.kind == "publish")).limit(1)
        ).first() is not None
