"""Arm every enabled trigger of a project: one factory per trigger kind.

A new trigger kind is one module plus one line in ``FACTORIES``. Each armed trigger keeps
what the server must persist between starts (a schedule's last window, the files already
seen) in ``trigger_state.cursor``, so a restart neither skips nor repeats an event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from headwater.config.models import TriggerConfig
from headwater.exceptions import HeadwaterError
from headwater.triggers.base import Emit, Trigger, TriggerStatus, utcnow

if TYPE_CHECKING:
    from headwater.runtime import ProjectRuntime
    from headwater.server.service import Server

log = logging.getLogger("headwater.triggers")


@dataclass
class ArmedTrigger:
    pipeline: str
    index: int
    kind: str
    trigger: Trigger

    @property
    def name(self) -> str:
        return f"{self.pipeline}.{self.index}"

    async def run(self, emit: Emit) -> None:
        await self.trigger.run(emit)

    def cursor(self) -> dict[str, Any]:
        """What must survive a restart: a schedule's last window, a probe's last value."""
        last = getattr(self.trigger, "last", None)
        if isinstance(last, datetime):
            return {"cursor": {"last": last.isoformat()}}
        if getattr(self.trigger, "has_baseline", False):
            return {"cursor": {"value": getattr(self.trigger, "last_value", None)}}
        return {}


class _Broken:
    """Stands in for a trigger that could not be armed, so its error shows in ``triggers``."""

    def __init__(self, name: str, message: str) -> None:
        # set, not ``fail()``: arm_all has logged it already, and an error is logged once
        self.status = TriggerStatus(name=name, error=message, error_at=utcnow())

    async def run(self, emit: Emit) -> None:
        import asyncio

        await asyncio.Event().wait()


Factory = Callable[["Server", str, int, TriggerConfig, dict[str, Any]], Trigger]


def _schedule(server: Server, pipeline: str, index: int, config: TriggerConfig,
              state: dict[str, Any]) -> Trigger:
    from headwater.triggers.schedule import ScheduleTrigger

    last = None
    cursor = state.get("cursor") or {}
    if cursor.get("last"):
        last = datetime.fromisoformat(cursor["last"])
    return ScheduleTrigger(pipeline=pipeline, index=index, trigger=config, last=last)


def _files(server: Server, pipeline: str, index: int, config: TriggerConfig,
           state: dict[str, Any]) -> Trigger:
    from headwater.triggers.files import FilesTrigger

    assert config.files is not None
    options = None
    if config.files.connection:
        options = {k: v for k, v in server.runtime.connection(config.files.connection).items()
                   if k != "type"}
    seen = _seen_files(server, pipeline)
    return FilesTrigger(pipeline, index, config.files, server.runtime.root, seen.__contains__,
                        storage_options=options)


def _seen_files(server: Server, pipeline: str) -> set[str]:
    """Files earlier fires already covered (their fingerprints), so a restart skips them."""
    from headwater.store.queue import last_fires

    seen: set[str] = set()
    for fire in last_fires(server.store, pipeline, limit=500):
        for key in (fire.get("info") or {}).get("fingerprints", []) or []:
            if isinstance(key, str):
                seen.add(key)
    return seen


def _code_change(server: Server, pipeline: str, index: int, config: TriggerConfig,
                 state: dict[str, Any]) -> Trigger:
    from headwater.triggers.code_change import CodeChangeTrigger

    return CodeChangeTrigger(server.runtime, pipeline, index)


def _dataset(server: Server, pipeline: str, index: int, config: TriggerConfig,
             state: dict[str, Any]) -> Trigger:
    from headwater.triggers.dataset import DatasetTrigger

    assert config.dataset is not None
    return DatasetTrigger(server.store, pipeline, index, config.dataset)


def _message(server: Server, pipeline: str, index: int, config: TriggerConfig,
             state: dict[str, Any]) -> Trigger:
    from headwater.triggers.messages import message_trigger

    assert config.message is not None
    connection = server.runtime.connection(config.message.connection)
    return message_trigger(pipeline, index, config.message, connection)


def _table_change(server: Server, pipeline: str, index: int, config: TriggerConfig,
                  state: dict[str, Any]) -> Trigger:
    from headwater.triggers.table_change import TableChangeTrigger

    assert config.table_change is not None
    connection = server.runtime.connection(config.table_change.connection)
    last = (state.get("cursor") or {}).get("value")
    return TableChangeTrigger(pipeline, index, config.table_change, connection,
                              last_value=last)


FACTORIES: dict[str, Factory] = {
    "schedule": _schedule,
    "interval": _schedule,
    "files": _files,
    "code_change": _code_change,
    "dataset": _dataset,
    "message": _message,
    "table_change": _table_change,
}
"""Trigger kind → factory. ``webhook`` has none: the API serves it."""


def arm_all(server: Server) -> list[ArmedTrigger]:
    from headwater.store.queue import trigger_states

    states = trigger_states(server.store)
    armed = []
    for name, pf in sorted(server.runtime.pipelines.items()):
        for index, config in enumerate(pf.config.triggers):
            kind = config.kind
            factory = FACTORIES.get(kind)
            if factory is None:
                continue
            state = states.get((name, index), {})
            try:
                trigger = factory(server, name, index, config, state)
            except (HeadwaterError, ImportError, ValueError, OSError) as exc:
                message = getattr(exc, "message", None) or str(exc)
                log.error("trigger %s.%d (%s) cannot be armed: %s", name, index, kind, message)
                trigger = _Broken(f"{name}:{index}", message)
            armed.append(ArmedTrigger(name, index, kind, trigger))
    return armed


def trigger_table(runtime: ProjectRuntime, server: Server | None = None) -> list[dict[str, Any]]:
    """Every trigger of every pipeline with its state (``headwater triggers``)."""
    from headwater.store.queue import last_fires, trigger_states

    states = trigger_states(runtime.store)
    live = {(a.pipeline, a.index): a.trigger.status for a in (server.triggers if server else [])}
    rows = []
    for name, pf in sorted(runtime.pipelines.items()):
        fires = last_fires(runtime.store, name, limit=200)
        for index, config in enumerate(pf.config.triggers):
            state = states.get((name, index), {})
            status = live.get((name, index))
            last = next((f for f in fires if f["trigger_index"] == index), None)
            rows.append({
                "pipeline": name, "index": index, "id": f"{name}.{index}",
                "kind": config.kind, "enabled": bool(state.get("enabled", True))
                and runtime.triggers_enabled(name),
                "spec": _spec(config),
                "last_fired_at": _iso(status.last_fired_at if status else None)
                or _iso(last["fired_at"] if last else None),
                "last_run_id": last["run_id"] if last else None,
                "next_fire_at": _iso(status.next_fire_at if status else
                                     state.get("next_fire_at")) or _next(config),
                "error": (status.error if status else state.get("error")),
            })
    return rows


def _spec(config: TriggerConfig) -> Any:
    from headwater.config.secrets import mask_references

    value = getattr(config, config.kind)
    if hasattr(value, "model_dump"):
        dumped = value.model_dump(by_alias=True, exclude_none=True)
        if "token" in dumped:
            dumped["token"] = "***"
        return {k: mask_references(v) if isinstance(v, str) else v for k, v in dumped.items()}
    return value


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return str(value.isoformat())


def _next(config: TriggerConfig) -> str | None:
    if config.schedule is None and config.interval is None:
        return None
    try:
        from headwater.triggers.base import utcnow
        from headwater.triggers.schedule import schedule_for

        return schedule_for(config).next_after(utcnow()).isoformat()
    except Exception:  # noqa: BLE001 - an invalid cron shows no next time
        return None
