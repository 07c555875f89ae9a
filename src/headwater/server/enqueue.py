"""Group commit for queued runs: every run asked for while one batch commits goes in the next.

A webhook answers only once its run is durably queued. Written one transaction each,
thousands of webhooks a minute queued behind each other on the store's writer lock and
paid one commit apiece; here the caller's thread hands its request to one writer thread
and waits, and the writer commits whatever has gathered in one transaction
(:func:`headwater.store.queue.fire_many`). A lone request is written at once: nothing
waits for a batch to fill, so a quiet server answers as fast as before.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future

from headwater.store import queue
from headwater.store.store import Store

log = logging.getLogger("headwater.server")

MAX_BATCH = 500
"""Runs per transaction at most (a SQLite statement binds a bounded number of values)."""

Queued = Callable[[list[tuple[queue.FireRequest, str]]], None]
"""Told of each committed batch's new runs (request, run id), in the writer thread."""


class Enqueuer:
    """Queues runs for many threads at once, one transaction per gathered batch."""

    def __init__(self, store: Store, on_queued: Queued | None = None,
                 max_batch: int = MAX_BATCH) -> None:
        self.store = store
        self.on_queued = on_queued
        self.max_batch = max_batch
        self._pending: list[tuple[queue.FireRequest, Future[str | None]]] = []
        self._ready = threading.Condition()
        self._writer: threading.Thread | None = None
        self._closed = False

    def submit(self, request: queue.FireRequest) -> str | None:
        """Queue one run and return its id once it is committed (None: a duplicate event).

        Raises what the store raised (a store outage), so the caller answers with an error
        rather than claiming a run it did not queue.
        """
        future: Future[str | None] = Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("the server is shutting down: no new runs are queued")
            self._pending.append((request, future))
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="hw-enqueue",
                                                daemon=True)
                self._writer.start()
            self._ready.notify()
        return future.result()

    def close(self) -> None:
        """Write what is pending, then stop the writer thread."""
        with self._ready:
            self._closed = True
            self._ready.notify()
            writer = self._writer
        if writer is not None:
            writer.join(timeout=10)

    def _write_loop(self) -> None:
        while True:
            with self._ready:
                while not self._pending and not self._closed:
                    self._ready.wait()
                if not self._pending:
                    return
                batch = self._pending[:self.max_batch]
                del self._pending[:self.max_batch]
            self._write(batch)

    def _write(self, batch: list[tuple[queue.FireRequest, Future[str | None]]]) -> None:
        requests = [request for request, _ in batch]
        try:
            run_ids = queue.fire_many(self.store, requests)
        except BaseException as exc:  # noqa: BLE001 - every waiter must hear of it
            for _, future in batch:
                future.set_exception(exc)
            return
        if self.on_queued is not None:
            try:
                self.on_queued([(request, run_id) for request, run_id
                                in zip(requests, run_ids, strict=True) if run_id is not None])
            except Exception:  # the runs are queued: a failed wake-up is only late
                log.exception("after queueing %d run(s)", len(batch))
        for (_, future), run_id in zip(batch, run_ids, strict=True):
            future.set_result(run_id)
