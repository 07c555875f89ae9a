"""``source: {type: http}``: a paginated JSON REST API → a Parquet file in the run folder.

Templates in ``url``, ``params`` and ``headers`` are rendered first, then ``${env:}``
references resolved (their values masked everywhere). Pages stream into a
:class:`~headwater.connectors.json_arrow.JsonSpool`, so memory holds one page. The
fingerprint lists the URLs read (with ETags); an ``incremental`` source sends the last
cursor it committed and offers the highest cursor seen as state, which advances only with
the publish that commits the rows.
"""

from __future__ import annotations

from typing import Any

from headwater.config.models import HttpSource
from headwater.config.secrets import REDACTOR, resolve
from headwater.connectors import http as httpconn
from headwater.connectors.json_arrow import JsonSpool
from headwater.sqltext import text as sql_string
from headwater.steps.base import StepContext, StepOutput, state_key

CURSOR_KEY = "cursor"
MAX_FINGERPRINT_PAGES = 100
"""Pages listed one by one in a version's fingerprint; beyond this only the count."""


def read_http(ctx: StepContext, source: HttpSource) -> StepOutput:
    """Read every page, write them as one Parquet spill, describe what was read."""
    url = resolve(ctx.render(source.url))
    params = {k: _render_value(ctx, v) for k, v in source.params.items()}
    headers = {k: ctx.render(v) for k, v in source.headers.items()}
    cursor = _last_cursor(ctx, source)
    if source.incremental is not None and cursor is not None:
        params[source.incremental.param] = cursor
    policy = httpconn.RetryPolicy(source.max_retries, source.backoff, source.request_timeout)
    spool = JsonSpool(ctx.workdir / f"{ctx.step_id}.ndjson")
    seen: list[dict[str, Any]] = []
    highest = cursor
    try:
        with httpconn.make_client(source.auth, headers, policy, ctx.cancelled) as client:
            request = httpconn.PageRequest(url, params, source.records, source.pagination,
                                           source.max_pages)
            for page, records in httpconn.pages(client, request, policy, ctx.cancelled):
                spool.add(records)
                seen.append({"url": REDACTOR(page.url), "status": page.status,
                             "etag": page.etag, "records": len(records)})
                highest = _highest(source, records, highest)
    except BaseException:
        spool.discard()
        raise
    out = ctx.workdir / f"{ctx.step_id}.parquet"
    schema = spool.finish(out)
    ctx.log(f"read {spool.rows} records from {len(seen)} page(s) of {REDACTOR(url)}",
            rows=spool.rows, pages=len(seen))
    return StepOutput(relation=_relation(out, len(schema)), rows=spool.rows,
                      sources=[_fingerprint(ctx, source, url, seen, cursor, highest)],
                      state=_state(ctx, source, cursor, highest),
                      info={"pages": len(seen),
                            "bytes": out.stat().st_size if out.exists() else 0})


def _render_value(ctx: StepContext, value: Any) -> Any:
    return resolve(ctx.render(value)) if isinstance(value, str) else value


def _relation(path: Any, columns: int) -> str:
    if columns == 0:  # nothing read: an empty relation (Parquet needs a column)
        return "SELECT NULL AS _empty LIMIT 0"
    return f"SELECT * FROM read_parquet({sql_string(str(path))})"


def _last_cursor(ctx: StepContext, source: HttpSource) -> Any:
    """The cursor the last publish committed, else ``initial``."""
    if source.incremental is None:
        return None
    state = ctx.project.store.state(ctx.pipeline, ctx.step_id)
    committed = state.get(CURSOR_KEY)
    if isinstance(committed, dict) and committed.get("value") is not None:
        return committed["value"]
    return source.incremental.initial


def _highest(source: HttpSource, records: list[Any], highest: Any) -> Any:
    """The greatest cursor value among ``records`` and ``highest`` (numbers or text)."""
    if source.incremental is None:
        return highest
    for record in records:
        value = httpconn.dig(record, source.incremental.path)
        if value is None:
            continue
        if highest is None or _greater(value, highest):
            highest = value
    return highest


def _greater(a: Any, b: Any) -> bool:
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool):
        return bool(a > b)
    return str(a) > str(b)


def _state(ctx: StepContext, source: HttpSource, cursor: Any,
           highest: Any) -> dict[str, dict[str, Any]]:
    if source.incremental is None or highest is None or highest == cursor:
        return {}
    return {state_key(ctx.step_id, CURSOR_KEY): {"value": highest}}


def _fingerprint(ctx: StepContext, source: HttpSource, url: str, seen: list[dict[str, Any]],
                 cursor: Any, highest: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"step": ctx.step_id, "type": "http", "url": REDACTOR(url),
                           "pages": len(seen), "requests": seen[:MAX_FINGERPRINT_PAGES]}
    if source.incremental is not None:
        out["cursor"] = {"from": cursor, "to": highest}
    return out

