"""The waiter: polls parked ``http`` waits and continues (or fails) their runs.

A parked run holds no thread: its wait is a row in the store (``store/waits.py``). Every
half second the waiter cancels parked runs asked to stop, polls the waits that are due
(one request each), checks child runs of ``run_pipeline``, expires callbacks past their
deadline, and for every wait that ended, either records the final
JSON as the waited step's output and queues the run again (it resumes with every finished
step reused), or fails the run naming the step and the cause. Any server may do this, so
waits survive a restart; the conditional updates in the store make each outcome apply once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from headwater.config.secrets import REDACTOR
from headwater.exceptions import HeadwaterError
from headwater.runtime import ProjectRuntime
from headwater.store import waits as waitstore
from headwater.store.store import Store, utcnow

if TYPE_CHECKING:
    from headwater.server.service import Server

log = logging.getLogger("headwater.server")

TICK_SECONDS = 0.5
CHILD_CHECK_SECONDS = 1.0
POLL_THREADS = 8


def callback_base(host: str, port: int) -> str:
    """The base URL callbacks are sent to: ``HEADWATER_PUBLIC_URL``, else the listen
    address (a wildcard host is reachable on loopback)."""
    public = os.environ.get("HEADWATER_PUBLIC_URL")
    if public:
        return public.rstrip("/")
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{shown}:{port}"


async def run_waiter(server: Server) -> None:
    """The server task: tick until the server stops; wake the dispatcher on a resume."""
    while not server.stopping.is_set():
        try:
            if await asyncio.to_thread(tick, server.runtime):
                server.wake()
        except HeadwaterError as exc:
            log.error("waiter: %s", exc.message)
        except Exception:  # the waiter must outlive a bad wait
            log.exception("waiter: internal error")
        await asyncio.sleep(TICK_SECONDS)


def tick(runtime: ProjectRuntime) -> int:
    """One round: poll what is due, expire callbacks, settle what ended. Runs resumed."""
    store = runtime.store
    for run_id in waitstore.cancelled_waiting_runs(store):
        waitstore.cancel_waiting_run(store, run_id)
    polls = waitstore.due(store, "poll")
    if polls:  # in parallel: one slow API must not delay every other wait
        with ThreadPoolExecutor(max_workers=min(POLL_THREADS, len(polls)),
                                thread_name_prefix="hw-wait") as pool:
            list(pool.map(functools.partial(_poll, runtime), polls))
    for row in waitstore.due(store, "run"):
        _check_child(store, row)
    for row in waitstore.expired_callbacks(store):
        waitstore.fail(store, row["token"], "timed out waiting for the callback (no POST "
                                            "to its URL before the deadline)")
    return sum(_settle(runtime, row) for row in waitstore.ready(store))


def _poll(runtime: ProjectRuntime, row: dict[str, Any]) -> None:
    # imported here: the HTTP client and Jinja would otherwise load with every server,
    # before /api/health answers, though most never park a run (issue 12, cold start)
    from headwater.steps.waits import PollWait, poll_once, timed_out

    store = runtime.store
    # no retries inside one poll: the next poll is the retry, and a tick stays short
    wait = dataclasses.replace(PollWait.from_json(row["spec"]["poll"]), retries=0)
    try:
        with wait.client() as client:
            result = poll_once(wait, client, lambda: False)
    except HeadwaterError as exc:
        waitstore.fail(store, row["token"], exc.message)
        return
    if result.done:
        waitstore.complete(store, row["token"], result.body)
        return
    now = utcnow()
    if row["deadline"] is not None and now + timedelta(seconds=wait.every) > row["deadline"]:
        waitstore.fail(store, row["token"], timed_out(wait, result).message)
        return
    waitstore.reschedule(store, row["token"], now + timedelta(seconds=wait.every),
                         result.status)
    runtime.store.log(row["run_id"], row["step_id"], "info",
                      REDACTOR(f"waiting for {wait.url}: {result.status}"), None)


def _check_child(store: Store, row: dict[str, Any]) -> None:
    """A ``run_pipeline`` wait: done when the child run ends (failed with its error)."""
    from headwater.steps.run_pipeline import FINAL, child_failure, child_outcome

    child = store.run(row["spec"]["child_run_id"])
    if child["status"] in FINAL:
        outcome = child_outcome(child)
        if child["status"] == "succeeded":
            waitstore.complete(store, row["token"], outcome)
        else:
            waitstore.fail(store, row["token"], child_failure(child))
        return
    now = utcnow()
    if row["deadline"] is not None and now > row["deadline"]:
        waitstore.fail(store, row["token"], f"child run {child['id']} of pipeline "
                                            f"{child['pipeline']!r} did not finish in time "
                                            f"(still {child['status']})")
        return
    waitstore.reschedule(store, row["token"], now + timedelta(seconds=CHILD_CHECK_SECONDS),
                         str(child["status"]))


def _settle(runtime: ProjectRuntime, row: dict[str, Any]) -> int:
    """Continue or fail the parked run of an ended wait (once across servers)."""
    store = runtime.store
    if not waitstore.claim_outcome(store, row["token"], row["status"]):
        return 0
    run_id, step_id = row["run_id"], row["step_id"]
    if row["status"] == "failed":
        kind = "run_pipeline" if row["kind"] == "run" else "http"
        message = REDACTOR(f"step '{step_id}' ({kind}) failed: {row['error']}")
        waitstore.fail_waiting_run(store, run_id, step_id, message)
        return 0
    from headwater.steps.waits import json_output

    body = (row["result"] or {}).get("json")
    workdir = runtime.runs_dir / run_id
    workdir.mkdir(parents=True, exist_ok=True)
    output = json_output(workdir, step_id, body, status=(row["spec"] or {}).get("status"))
    waitstore.continue_after_wait(store, run_id, step_id, output.to_json())
    store.log(run_id, step_id, "info", "wait ended: the run continues", None)
    return 1
