"""``code_change: true``: run a pipeline once when what it means has changed.

The code version (``engine.codeversion``: the pipeline YAML, its SQL by tokens, its Python
by AST, and project modules it imports) is computed at start and after every change in
the project folder (watchfiles, debounced). The pipeline fires when that version differs
from the one of its last successful run, once per version and last success (the dedupe key
holds both: returning to an earlier version, after a success with another one, fires
again; checking twice before the run finishes does not). A pipeline that never succeeded
does not fire on code alone: its first run is someone's decision.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from headwater.config.loader import load_pipeline_file
from headwater.exceptions import HeadwaterError
from headwater.triggers.base import Emit, Fire, TriggerStatus, utcnow

if TYPE_CHECKING:
    from headwater.runtime import ProjectRuntime

WATCHED = (".py", ".sql", ".yaml", ".yml")


class CodeChangeTrigger:
    def __init__(self, runtime: ProjectRuntime, pipeline: str, index: int,
                 debounce_ms: int = 200) -> None:
        self.runtime = runtime
        self.pipeline = pipeline
        self.index = index
        self.debounce_ms = debounce_ms
        self.status = TriggerStatus(name=f"{pipeline}:{index}")

    def _current(self) -> str:
        from headwater.config.codeversion import code_version

        pf = self.runtime.pipeline(self.pipeline)
        fresh = load_pipeline_file(pf.path, self.runtime.root)
        return code_version(self.runtime.root, fresh).hash

    def _last_success(self) -> tuple[str, str | None] | None:
        """The id and code version of the pipeline's last successful run."""
        run = self.runtime.store.last_successful_run(self.pipeline)
        return None if run is None else (str(run["id"]), run.get("code_version"))

    async def check(self, emit: Emit) -> None:
        try:
            current = await asyncio.to_thread(self._current)
            last = await asyncio.to_thread(self._last_success)
        except HeadwaterError as exc:
            self.status.fail(f"cannot compute the code version: {exc.message}")
            return
        self.status.recover()
        if last is None or last[1] == current:
            return
        success, previous = last
        await emit(Fire(pipeline=self.pipeline, trigger_index=self.index, kind="code_change",
                        dedupe_key=f"code:{self.pipeline}:{success}:{current}",
                        info={"code_version": current, "previous_code_version": previous},
                        event_at=utcnow()))
        self.status.fired()

    async def run(self, emit: Emit) -> None:
        from watchfiles import awatch

        await self.check(emit)
        root = self.runtime.root
        async for changes in awatch(root, debounce=self.debounce_ms, recursive=True,
                                    watch_filter=lambda _c, p: _relevant(root, p)):
            if changes:
                self.runtime._pipelines = None  # re-read pipeline files on next use
                await self.check(emit)


def _relevant(root: Path, path: str) -> bool:
    rel = Path(path)
    if not path.endswith(WATCHED):
        return False
    parts = rel.relative_to(root).parts if rel.is_relative_to(root) else rel.parts
    return not any(p.startswith(".") or p in ("warehouse", "__pycache__") for p in parts)
