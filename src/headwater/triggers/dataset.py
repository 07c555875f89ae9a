"""``dataset: NAME`` triggers: fire when a new version of that dataset is published.

Versions are read from the shared store, so a publish by any server or any ``headwater
run`` fires. The poll is one small indexed query on rows newer than the last one seen,
which stays flat however long the history grows.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

from headwater.exceptions import HeadwaterError
from headwater.store.queue import versions_since
from headwater.store.store import Store
from headwater.triggers.base import Emit, Fire, TriggerStatus, utcnow


class DatasetTrigger:
    def __init__(self, store: Store, pipeline: str, index: int, dataset: str,
                 every: float = 0.1, since: datetime | None = None) -> None:
        self.store = store
        self.pipeline = pipeline
        self.index = index
        self.dataset = dataset
        self.every = every
        self.since = since or utcnow()
        self.status = TriggerStatus(name=f"{pipeline}:{index}")

    async def run(self, emit: Emit) -> None:
        while True:
            try:
                rows = await asyncio.to_thread(versions_since, self.store, self.since)
            except HeadwaterError as exc:
                self.status.fail(f"cannot read dataset versions: {exc.message}")
                await asyncio.sleep(min(30.0, self.every * 50))
                continue
            self.status.recover()
            for row in rows:
                self.since = max(self.since, row["created_at"])
                if row["dataset"] != self.dataset:
                    continue
                version = int(row["version"])
                await emit(Fire(
                    pipeline=self.pipeline, trigger_index=self.index, kind="dataset",
                    dedupe_key=f"dataset:{self.pipeline}:{self.index}:{self.dataset}@{version}",
                    info={"dataset": self.dataset, "dataset_version": version},
                    event_at=row["created_at"]))
                self.status.fired()
            await asyncio.sleep(self.every)
