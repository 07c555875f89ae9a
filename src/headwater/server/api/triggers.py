"""``/api/triggers``: every trigger's state, last and next fire; enable and disable."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException

from headwater.config.secrets import REDACTOR
from headwater.server.api.common import Context
from headwater.server.auth import Identity


def router(ctx: Context) -> APIRouter:
    api = APIRouter(tags=["triggers"])
    server = ctx.server

    @api.get("/triggers", dependencies=[Depends(ctx.viewer)])
    def list_triggers(pipeline: str | None = None) -> list[dict[str, Any]]:
        """Each trigger (id ``<pipeline>.<index>``) with enabled, last/next fire and error."""
        from headwater.triggers.registry import trigger_table

        rows = trigger_table(server.runtime, server)
        return REDACTOR.deep([r for r in rows  # type: ignore[no-any-return]
                              if pipeline is None or r["pipeline"] == pipeline])

    @api.post("/triggers/{trigger_id}/enable")
    def enable(trigger_id: str, who: Identity = Depends(ctx.operator)) -> dict[str, Any]:
        """Let the trigger fire again."""
        return _toggle(ctx, who, trigger_id, True)

    @api.post("/triggers/{trigger_id}/disable")
    def disable(trigger_id: str, who: Identity = Depends(ctx.operator)) -> dict[str, Any]:
        """Stop the trigger from firing (its state is kept)."""
        return _toggle(ctx, who, trigger_id, False)

    return api


def _toggle(ctx: Context, who: Identity, trigger_id: str, enabled: bool) -> dict[str, Any]:
    from headwater.store.queue import save_trigger_state

    name, _, index = trigger_id.rpartition(".")
    if not name or not index.isdigit():
        raise HTTPException(422, f"a trigger id is <pipeline>.<index>, not {trigger_id!r}")
    pf = ctx.server.runtime.pipeline(name)
    number = int(index)
    if number >= len(pf.config.triggers):
        raise HTTPException(404, f"pipeline {name!r} has no trigger {number} (it has "
                                 f"{len(pf.config.triggers)})")
    save_trigger_state(ctx.server.store, name, number, pf.config.triggers[number].kind,
                       enabled=enabled)
    ctx.audit(who, "enable" if enabled else "disable", trigger_id)
    return {"id": trigger_id, "enabled": enabled}
