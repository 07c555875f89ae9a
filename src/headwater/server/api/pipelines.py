"""``/api/pipelines``: the list, one pipeline (DAG, triggers, runs), run now, the builder."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse

from headwater.config.secrets import REDACTOR
from headwater.exceptions import ConfigError, HeadwaterError
from headwater.project import coerce_params
from headwater.server import builder, queries
from headwater.server.api.common import Context, json_body, off_loop
from headwater.server.auth import Identity


def router(ctx: Context) -> APIRouter:
    api = APIRouter(tags=["pipelines"])
    server = ctx.server

    @api.get("/pipelines", dependencies=[Depends(ctx.viewer)])
    def list_pipelines() -> list[dict[str, Any]]:
        """Every pipeline with its last run, next trigger fire and stale flag; failed first."""
        return queries.pipelines(server)

    @api.get("/pipelines/{name}", dependencies=[Depends(ctx.viewer)])
    def get_pipeline(name: str) -> dict[str, Any]:
        """Summary, DAG (nodes/edges), triggers with state, code version, recent runs."""
        return queries.pipeline(server, name)

    @api.get("/pipelines/{name}/dag", dependencies=[Depends(ctx.viewer)])
    def get_dag(name: str) -> dict[str, Any]:
        """The steps as nodes and their dependencies as edges."""
        return queries.dag(server, name)

    @api.post("/pipelines/{name}/runs", status_code=202)
    async def run_now(name: str, request: Request,
                      who: Identity = Depends(ctx.operator)) -> dict[str, Any]:
        """Queue a run now; body ``{"params": {...}}`` (checked against ``params:``)."""
        body = await json_body(request) or {}
        raw = body.get("params", {}) if isinstance(body, dict) else None
        if not isinstance(raw, dict):
            raise HTTPException(422, "params must be a JSON object")
        pf = await off_loop(server.runtime.pipeline, name)
        params = coerce_params(pf.config.params, raw, name)
        run_id = await off_loop(server.queue_run, name, kind="manual", info={"by": who.actor},
                                params=params)
        await off_loop(ctx.audit, who, "run", name, {"run_id": run_id, "params": params})
        return {"run_id": run_id, "status": "queued"}

    @api.post("/sources/preview")
    async def preview_source(request: Request,
                             _who: Identity = Depends(ctx.operator)) -> dict[str, Any]:
        """The first rows of a files source (``{path, format, ...}``) as a run would read it."""
        from headwater.server.sourcepreview import preview_source

        return await off_loop(preview_source, server.runtime, await json_body(request))

    @api.get("/pipelines/{name}/definition", dependencies=[Depends(ctx.viewer)])
    def get_definition(name: str) -> JSONResponse:
        """The pipeline file as JSON; its ``ETag`` is the file version to send as If-Match."""
        doc, _file, version = builder.definition(server.runtime, name)
        return JSONResponse(REDACTOR.deep(doc), headers={"ETag": f'"{version}"'})

    @api.put("/pipelines/{name}/definition")
    async def put_definition(name: str, request: Request, dry_run: bool = False,
                             who: Identity = Depends(ctx.operator)) -> JSONResponse:
        """Check and write ``pipelines/<name>.yaml`` losslessly (comments and order kept).

        422 lists every problem (file, line, key) and writes nothing; 409 if the file
        changed since the ``If-Match`` version. ``dry_run`` returns the YAML and its diff.
        """
        doc = await json_body(request)
        return await _save(ctx, who, name, doc, request, dry_run)

    @api.post("/pipelines", status_code=201)
    async def create_pipeline(request: Request, dry_run: bool = False,
                              who: Identity = Depends(ctx.operator)) -> JSONResponse:
        """Create ``pipelines/<name>.yaml`` from a definition (the same shape as GET)."""
        doc = await json_body(request)
        return await _save(ctx, who, None, doc, request, dry_run)

    return api


async def _save(ctx: Context, who: Identity, name: str | None, doc: Any, request: Request,
                dry_run: bool) -> JSONResponse:
    expected = (request.headers.get("if-match") or "").strip('"') or None
    try:
        outcome = await off_loop(builder.save, ctx.server.runtime, name, doc,
                                 expected=expected, dry_run=dry_run)
    except builder.Conflict as exc:
        return _error(409, exc.message)
    except ConfigError as exc:
        return JSONResponse({"detail": REDACTOR(exc.message),
                             "problems": REDACTOR.deep(exc.problems)}, status_code=422)
    except HeadwaterError as exc:
        return _error(422, exc.message)
    if outcome.written:
        await off_loop(ctx.audit, who, "create" if name is None else "edit", outcome.name,
                       {"file": outcome.file, "version": outcome.version})
    status = 201 if name is None and outcome.written else 200
    return JSONResponse({"name": outcome.name, "file": outcome.file, "yaml": outcome.yaml,
                         "diff": outcome.diff, "version": outcome.version,
                         "written": outcome.written}, status_code=status,
                        headers={"ETag": f'"{outcome.version}"'})


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": REDACTOR(message)}, status_code=status)
