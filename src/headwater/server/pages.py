"""The web UI: server-rendered pages over the same documents the API returns.

Every page calls a :mod:`headwater.server.queries` function (the one its ``/api`` twin
returns) and renders it with Jinja2, autoescaped: pipeline names, params and data are
untrusted and never marked safe. A little vanilla JavaScript (``static/app.js``) follows
runs live over SSE and sends operator actions to the API. Every asset is served from the
package: no CDN, no Node at run time. Pages never write; changes go through the API.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from headwater.config.secrets import REDACTOR
from headwater.exceptions import HeadwaterError, NotFoundError
from headwater.server import queries
from headwater.server.api.common import Context
from headwater.server.auth import COOKIE, SESSION_SECONDS, Identity
from headwater.server.graphlayout import layout

HERE = Path(__file__).parent
PAGE_ROWS = 25


@lru_cache(maxsize=1)
def _env() -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.ChainableUndefined)
    env.filters["when"] = _when
    env.filters["secs"] = _secs
    env.filters["num"] = _num
    env.filters["short"] = _short
    env.filters["spec"] = _spec
    return env


def _spec(value: Any) -> str:
    """A trigger's settings on one line, as a person would write them in YAML."""
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    return _short(value, 80)


def _missing(value: Any) -> bool:
    """None, or a key a stats document does not have (stats differ by column kind)."""
    import jinja2

    return value is None or isinstance(value, jinja2.Undefined)


def _when(value: str | None) -> str:
    if _missing(value) or not value:
        return "—"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _secs(value: float | None) -> str:
    if _missing(value) or value is None:
        return "—"
    if value < 60:
        return f"{value:.1f} s"
    return f"{int(value // 60)} min {int(value % 60)} s"


def _num(value: Any) -> str:
    if _missing(value):
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return _short(value)


def _short(value: Any, size: int = 40) -> str:
    text = "—" if _missing(value) else str(value)
    return text if len(text) <= size else text[:size - 1] + "…"


class Pages:
    """The page handlers, sharing the API's context (server, auth)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.server = ctx.server

    # ------------------------------------------------------------------ plumbing

    def who(self, request: Request) -> Identity | None:
        """The caller, or None when they must log in first."""
        try:
            return self.ctx.auth.identify(request)
        except HTTPException:
            return None

    def render(self, request: Request, who: Identity, template: str, status: int = 200,
               **data: Any) -> HTMLResponse:
        html = _env().get_template(template).render(
            who=who, auth=self.ctx.auth.enabled(), path=request.url.path,
            project=self.server.runtime.config.name, **data)
        return HTMLResponse(html, status_code=status,
                            headers={"Content-Security-Policy": CSP,
                                     "X-Content-Type-Options": "nosniff",
                                     "Referrer-Policy": "same-origin"})

    async def page(self, request: Request, template: str, build: Any,
                   *args: Any) -> Response:
        """Log-in check, the page's documents (off the event loop), errors as a page."""
        who = self.who(request)
        if who is None:
            expired = COOKIE in request.cookies
            target = quote(str(request.url.path) + (f"?{request.url.query}"
                                                    if request.url.query else ""))
            return RedirectResponse(f"/login?next={target}"
                                    + ("&expired=1" if expired else ""), status_code=303)
        try:
            data = await asyncio.to_thread(build, *args)
        except NotFoundError as exc:
            return self.render(request, who, "error.html", 404, title="Not found",
                               message=REDACTOR(exc.message))
        except HeadwaterError as exc:
            return self.render(request, who, "error.html", 422, title="Cannot show this",
                               message=REDACTOR(exc.message))
        return self.render(request, who, template, **data)

    # ------------------------------------------------------------------ documents

    def index(self) -> dict[str, Any]:
        return {"title": "Pipelines", "pipelines": queries.pipelines(self.server),
                "datasets": queries.datasets(self.server),
                "runs": queries.runs(self.server, limit=15)["runs"]}

    def runs(self, pipeline: str | None, status: str | None,
             before: int | None) -> dict[str, Any]:
        statuses = [status] if status else None
        page = queries.runs(self.server, pipeline=pipeline or None, status=statuses,
                            before=before, limit=PAGE_ROWS * 2)
        return {"title": "Runs", "page": page, "pipeline": pipeline or "",
                "status_filter": status or "", "pipelines": sorted(self.server.runtime.pipelines)}

    def pipeline(self, name: str) -> dict[str, Any]:
        doc = queries.pipeline(self.server, name)
        return {"title": name, "p": doc, "graph": layout(doc["dag"]["nodes"],
                                                         doc["dag"]["edges"])}

    def run(self, run_id: str) -> dict[str, Any]:
        doc = queries.run(self.server, run_id)
        logs = queries.logs(self.server, run_id)
        rejected = queries.rejected_for_run(self.server, run_id, 0, PAGE_ROWS) \
            if doc["rejected_dataset"] else None
        return {"title": f"Run {doc['id']}", "run": doc, "logs": logs,
                "gantt": gantt(doc), "rejected": rejected,
                "last_log": logs[-1]["id"] if logs else 0}

    def dataset(self, name: str, version: int | None, offset: int, a: int | None,
                b: int | None) -> dict[str, Any]:
        doc = queries.dataset(self.server, name, version)
        versions = queries.versions(self.server, name, limit=50)["versions"]
        preview = queries.preview(self.server, name, doc["version"], offset, PAGE_ROWS)
        rejected = queries.rejected_for_version(self.server, name, doc["version"], 0,
                                                PAGE_ROWS) if doc["rejected_dataset"] else None
        diff = queries.diff(self.server, name, a, b) if a and b else None
        return {"title": name, "d": doc, "versions": versions, "preview": preview,
                "rejected": rejected, "diff": diff, "a": a, "b": b,
                "columns": column_rows(doc), "drift": drift_bars(doc)}

    def lineage(self, name: str, version: int | None) -> dict[str, Any]:
        doc = queries.lineage(self.server, name, version)
        nodes = [{**n, "href": _node_link(n)} for n in doc["nodes"]]
        return {"title": f"Lineage of {name}", "l": doc, "graph": layout(nodes, doc["edges"])}

    def builder(self, name: str | None) -> dict[str, Any]:
        if name is not None:
            self.server.runtime.pipeline(name)  # 404 before the form
        return {"title": f"Edit {name}" if name else "New pipeline", "name": name,
                "connections": sorted(self.server.runtime.config.connections),
                "datasets": [d["name"] for d in queries.datasets(self.server)]}


CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
"""Only the package's own files run: injected markup could not load or run anything."""


def gantt(run: dict[str, Any]) -> list[dict[str, Any]]:
    """One bar per step attempt, as percentages of the run's span (for CSS widths)."""
    attempts = [s for s in run["steps"] if s.get("started_at")]
    if not attempts:
        return []
    starts = [datetime.fromisoformat(s["started_at"]) for s in attempts]
    ends = [datetime.fromisoformat(s["finished_at"]) if s.get("finished_at") else None
            for s in attempts]
    t0 = min(starts)
    now = datetime.now(t0.tzinfo)
    t1 = max([e or now for e in ends] + starts)
    span = max((t1 - t0).total_seconds(), 1e-3)
    bars = []
    for step, start, end in zip(attempts, starts, ends, strict=True):
        left = (start - t0).total_seconds() / span * 100
        width = max(((end or now) - start).total_seconds() / span * 100, 0.8)
        bars.append({"step": step, "left": round(left, 2),
                     "width": round(min(width, 100 - left), 2) or 0.8})
    return bars


def column_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Schema joined with stats and drift, and each histogram scaled to bar heights."""
    stats = doc["stats"]["columns"] or {}
    drift = ((doc.get("drift") or {}).get("columns") or {}) if isinstance(doc.get("drift"),
                                                                         dict) else {}
    rows = []
    for col in doc["schema"]:
        s = stats.get(col["name"], {}) if isinstance(stats, dict) else {}
        counts = list((s.get("histogram") or {}).get("counts") or [])
        if not counts and s.get("top"):
            counts = [t.get("count", 0) for t in s["top"][:10]]
        peak = max(counts, default=0) or 1
        bars = [{"h": round(28 * c / peak, 1), "x": i * 8, "count": c}
                for i, c in enumerate(counts)]
        rows.append({"name": col["name"], "type": col.get("type"), "s": s, "bars": bars,
                     "psi": (drift.get(col["name"]) or {}).get("psi")
                     if isinstance(drift.get(col["name"]), dict) else None})
    return rows


def drift_bars(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """PSI per column as bar widths; 0.1 is a moderate and 0.25 a large shift."""
    drift = doc.get("drift") or {}
    columns = drift.get("columns") if isinstance(drift, dict) else None
    if not isinstance(columns, dict):
        return []
    out = []
    for name, value in columns.items():
        psi = value.get("psi") if isinstance(value, dict) else None
        if psi is None:
            continue
        level = "high" if psi >= 0.25 else "mid" if psi >= 0.1 else "low"
        out.append({"name": name, "psi": psi, "width": round(min(psi / 0.5, 1.0) * 100, 1),
                    "level": level})
    return out


def _node_link(node: dict[str, Any]) -> str:
    """Where a click on a lineage node goes: the version, the run, or the pipeline."""
    if node["kind"] == "dataset" and not node.get("missing"):
        return f"/datasets/{quote(str(node['dataset']), safe='')}?version={node['version']}"
    if node["kind"] == "run":
        return f"/runs/{quote(str(node['run_id']), safe='')}"
    if node["kind"] == "step" and node["id"].count(".") >= 1:
        return f"/pipelines/{quote(node['id'][5:].rsplit('.', 1)[0], safe='')}"
    return ""


def _int(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    if not value.isdigit():
        raise HTTPException(422, f"expected a positive number, not {value[:40]!r}")
    return int(value)


def _safe_next(target: str) -> str:
    """Only a path on this server: never an open redirect."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def include_pages(app: FastAPI, ctx: Context) -> None:
    """Mount the static files, the pages, log-in/out and the API docs."""
    pages = Pages(ctx)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index(request: Request) -> Response:
        return await pages.page(request, "index.html", pages.index)

    @app.get("/runs", response_class=HTMLResponse, include_in_schema=False)
    async def runs_page(request: Request, pipeline: str | None = None,
                        status: str | None = None, before: str | None = None) -> Response:
        return await pages.page(request, "runs.html", pages.runs, pipeline, status,
                                _int(before))

    @app.get("/pipelines/new", response_class=HTMLResponse, include_in_schema=False)
    async def new_pipeline(request: Request) -> Response:
        return await pages.page(request, "builder.html", pages.builder, None)

    @app.get("/pipelines/{name}", response_class=HTMLResponse, include_in_schema=False)
    async def pipeline_page(request: Request, name: str) -> Response:
        return await pages.page(request, "pipeline.html", pages.pipeline, name)

    @app.get("/pipelines/{name}/edit", response_class=HTMLResponse, include_in_schema=False)
    async def edit_pipeline(request: Request, name: str) -> Response:
        return await pages.page(request, "builder.html", pages.builder, name)

    @app.get("/runs/{run_id}", response_class=HTMLResponse, include_in_schema=False)
    async def run_page(request: Request, run_id: str) -> Response:
        return await pages.page(request, "run.html", pages.run, run_id)

    @app.get("/datasets/{name}", response_class=HTMLResponse, include_in_schema=False)
    async def dataset_page(request: Request, name: str, version: str | None = None,
                           offset: str | None = None, a: str | None = None,
                           b: str | None = None) -> Response:
        return await pages.page(request, "dataset.html", pages.dataset, name, _int(version),
                                _int(offset) or 0, _int(a), _int(b))

    @app.get("/lineage/{name}", response_class=HTMLResponse, include_in_schema=False)
    async def lineage_page(request: Request, name: str,
                           version: str | None = None) -> Response:
        return await pages.page(request, "lineage.html", pages.lineage, name, _int(version))

    _auth_routes(app, pages)
    _html_errors(app, pages)


def _html_errors(app: FastAPI, pages: Pages) -> None:
    """A page address that fails (unknown page, bad query value) answers a page, not JSON."""
    from fastapi.exception_handlers import http_exception_handler
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(StarletteHTTPException)
    async def html_error(request: Request, exc: StarletteHTTPException) -> Response:
        if request.url.path.startswith(("/api", "/static", "/metrics")):
            return await http_exception_handler(request, exc)
        who = pages.who(request) or Identity("viewer", "anonymous", "open", "")
        title = "Not found" if exc.status_code == 404 else "Cannot show this"
        message = exc.detail if isinstance(exc.detail, str) else "the request was refused"
        if exc.status_code == 404 and message == "Not Found":
            message = f"there is no page at {request.url.path}"
        return pages.render(request, who, "error.html", exc.status_code, title=title,
                            message=message)


def _auth_routes(app: FastAPI, pages: Pages) -> None:
    anonymous = Identity("viewer", "anonymous", "open", "")

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(request: Request, next: str = "/", expired: str | None = None) -> Response:
        return pages.render(request, anonymous, "login.html", title="Log in",
                            next=_safe_next(next), error=None,
                            expired=bool(expired))

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        raw = await request.body()
        if len(raw) > 10_000:
            raise HTTPException(413, "the log-in form is larger than 10,000 bytes")
        form = parse_qs(raw.decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0].strip()
        target = _safe_next((form.get("next") or ["/"])[0])
        role = await asyncio.to_thread(pages.ctx.auth.role, token) if token else None
        if role is None:
            return pages.render(request, anonymous, "login.html", status=401, title="Log in",
                                next=target, expired=False,
                                error="That token is not valid (wrong, expired or revoked).")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, token, max_age=SESSION_SECONDS, httponly=True,
                            samesite="strict", secure=request.url.scheme == "https", path="/")
        return response

    @app.post("/logout", include_in_schema=False)
    def logout() -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    @app.get("/api/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs() -> HTMLResponse:
        """Swagger UI from the package's own copy (no CDN: works offline)."""
        html = _env().get_template("docs.html").render()
        return HTMLResponse(html)
