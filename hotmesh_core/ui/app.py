"""The dashboard's web application: Starlette routes rendering Jinja2 templates.

``create_app(client)`` builds it over an open client (any backend). Pages are
server-rendered HTML with autoescaping on (entity content is user data: a
``<script>`` in an entity renders as text); a few lines of plain JavaScript
(``static/ui.js``) refresh the live parts. There is no build step.

Read-only unless made with ``allow_actions=True``. Actions are POSTs that must
carry the page's CSRF token (a random secret of this process, in a hidden form
field, compared in constant time) and, when the browser sends one, an
``Origin`` of this server; every request must name this server in its ``Host``
(so a DNS-rebound page cannot read the token). GETs never change anything.
"""

from __future__ import annotations

import hmac
import json
import math
import secrets
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import jinja2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import BackendUnavailable, HotMeshError, WorkflowNotFound
from ..memflow import Client
from ..observe import InvalidCursor
from ..serde import ensure_json
from .data import (
    PAGE_SIZE,
    STATUSES,
    Dashboard,
    InvalidFilter,
    RunFilters,
    available_actions,
    parse_where,
)

__all__ = ["create_app"]

PACKAGE = "hotmesh_core.ui"
NONE = "\u2013"  # an en dash: no value
LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")

Handler = Callable[[Request], Awaitable[Response]]


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader(PACKAGE, "templates"),
        autoescape=True,  # every value escaped, in every template
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pretty"] = _pretty
    env.filters["short"] = _short
    env.filters["stamp"] = _stamp
    env.filters["clock"] = _clock
    env.filters["seconds"] = _seconds
    env.filters["ago"] = _ago
    env.filters["q"] = lambda value: quote(str(value), safe="")
    env.filters["thread"] = lambda d: "main" if d == "" else d
    return env


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=False, default=str, ensure_ascii=False)


def _short(value: Any, width: int = 80) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 1] + "…"


def _stamp(seconds: float | None) -> str:
    if seconds is None:
        return NONE
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S") + f".{moment.microsecond // 1000:03d}"


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return NONE
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.strftime("%H:%M:%S") + f".{moment.microsecond // 1000:03d}"


def _seconds(value: float | None) -> str:
    if value is None or math.isnan(value):
        return NONE
    if value < 1:
        return f"{value * 1000:.1f} ms"
    if value < 120:
        return f"{value:.2f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def _ago(seconds: float | None, now: float) -> str:
    return NONE if seconds is None else _seconds(max(now - seconds, 0.0))


def _moment(text: str | None, what: str) -> float | None:
    """A ``datetime-local`` input (UTC) or an ISO time as POSIX seconds."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidFilter(f"{what}: {text!r} is not a time like 2026-01-31T09:30") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _version(text: str | None, what: str) -> int | None:
    if text is None or text == "":
        return None
    if not text.isdigit():
        raise InvalidFilter(f"{what}: {text!r} is not a version number")
    return int(text)


class _Pages:
    def __init__(
        self,
        client: Client,
        *,
        allow_actions: bool,
        refresh: float,
        token: str,
        page_size: int,
    ) -> None:
        self.data = Dashboard(client)
        self.page_size = page_size
        self.allow_actions = allow_actions
        self.refresh = refresh
        self.token = token
        self.env = _templates()

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        template = self.env.get_template(name)
        html = template.render(
            app_id=self.data.app_id,
            backend=self.data.backend.name,
            allow_actions=self.allow_actions,
            csrf=self.token if self.allow_actions else "",
            refresh_ms=int(self.refresh * 1000),
            path=request.url.path,
            note=request.query_params.get("note", ""),
            **context,
        )
        return HTMLResponse(html, status_code=status)

    def problem(self, request: Request, status: int, message: str) -> Response:
        return self.render(request, "problem.html", status=status, message=message)

    # -- pages ---------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        return RedirectResponse("/runs", status_code=303)

    def _filters(self, params: Mapping[str, str]) -> RunFilters:
        status = params.get("status") or None
        if status is not None and status not in STATUSES:
            raise InvalidFilter(f"status: {status!r} is not one of {', '.join(STATUSES)}")
        return RunFilters(
            status=status,
            workflow_name=params.get("workflow") or None,
            entity=params.get("entity") or None,
            id_prefix=params.get("id") or None,
            where=parse_where(params.get("where", "")),
            created_from=_moment(params.get("since"), "since"),
            created_to=_moment(params.get("until"), "until"),
        )

    async def runs(self, request: Request) -> Response:
        params = request.query_params
        fragment = params.get("fragment") == "1"
        values = {k: params.get(k, "") for k in ("status", "workflow", "entity", "id", "where")}
        values.update({k: params.get(k, "") for k in ("since", "until")})
        try:
            filters = self._filters(params)
            page = await self.data.runs(
                filters, cursor=params.get("after") or None, limit=self.page_size
            )
        except (InvalidFilter, InvalidCursor, HotMeshError) as error:
            return (
                self.problem(request, 400, str(error))
                if not fragment
                else Response(str(error), status_code=400)
            )
        kept = {k: v for k, v in values.items() if v}
        next_url = None
        if page.next_cursor is not None:
            next_url = "/runs?" + urlencode({**kept, "after": page.next_cursor})
        live_url = "/runs?" + urlencode({**kept, "fragment": "1"})
        first_page = not params.get("after")
        return self.render(
            request,
            "runs_table.html" if fragment else "runs.html",
            page=page,
            values=values,
            statuses=STATUSES,
            next_url=next_url,
            first_url="/runs?" + urlencode(kept),
            live_url=live_url if first_page else None,
            now=self.data.backend.now(),
        )

    async def run(self, request: Request) -> Response:
        workflow_id = request.path_params["workflow_id"]
        try:
            view = await self.data.run(workflow_id)
        except WorkflowNotFound as error:
            return self.problem(request, 404, str(error))
        except HotMeshError as error:
            return self.problem(request, 400, str(error))
        return self.render(
            request,
            "run.html",
            view=view,
            run=view.export,
            actions=available_actions(),
        )

    async def memory(self, request: Request) -> Response:
        workflow_id = request.path_params["workflow_id"]
        params = request.query_params
        try:
            view = await self.data.memory(
                workflow_id,
                at=_version(params.get("at"), "at"),
                diff_from=_version(params.get("from"), "from"),
                diff_to=_version(params.get("to"), "to"),
            )
        except WorkflowNotFound as error:
            return self.problem(request, 404, str(error))
        except HotMeshError as error:
            return self.problem(request, 400, str(error))
        return self.render(request, "memory.html", view=view)

    async def operations(self, request: Request) -> Response:
        view = await self.data.operations()
        return self.render(request, "operations.html", view=view)

    # -- actions -------------------------------------------------------------------

    async def _form(self, request: Request) -> dict[str, str] | Response:
        """The POSTed form, once the request passed the action checks; else the refusal."""
        if not self.allow_actions:
            return self.problem(
                request, 403, "actions are off: start the dashboard with --allow-actions"
            )
        origin = request.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
            return self.problem(request, 403, "refused: the request came from another site")
        if request.headers.get("content-type", "").split(";")[0] != (
            "application/x-www-form-urlencoded"
        ):
            return self.problem(request, 415, "actions take a form (urlencoded)")
        body = (await request.body()).decode("utf-8", "replace")
        form = {key: values[-1] for key, values in parse_qs(body, keep_blank_values=True).items()}
        if not hmac.compare_digest(form.get("csrf", ""), self.token):
            return self.problem(request, 403, "refused: missing or wrong CSRF token")
        return form

    async def signal(self, request: Request) -> Response:
        form = await self._form(request)
        if isinstance(form, Response):
            return form
        signal_id = form.get("signal_id", "").strip()
        back = form.get("back", "/runs")
        try:
            data = json.loads(form.get("data") or "null")
        except json.JSONDecodeError as error:
            return self.problem(request, 400, f"signal data must be JSON ({error.msg})")
        try:
            taken = await self.data.signal(signal_id, ensure_json(data, what="signal data"))
        except HotMeshError as error:
            return self.problem(request, 400, str(error))
        note = "delivered" if taken else "kept for its first waiter"
        return _back(back, f"signal {signal_id} {note}")

    async def interrupt(self, request: Request) -> Response:
        form = await self._form(request)
        if isinstance(form, Response):
            return form
        workflow_id = request.path_params["workflow_id"]
        try:
            done = await self.data.interrupt(workflow_id, form.get("reason") or None)
        except WorkflowNotFound as error:
            return self.problem(request, 404, str(error))
        note = "interrupted" if done else "had already finished"
        return _back(f"/runs/{quote(workflow_id, safe='')}", f"run {note}")

    async def run_action(self, request: Request) -> Response:
        form = await self._form(request)
        if isinstance(form, Response):
            return form
        workflow_id = request.path_params["workflow_id"]
        action = request.path_params["action"]
        try:
            await self.data.run_action(workflow_id, action)
        except WorkflowNotFound as error:
            return self.problem(request, 404, str(error))
        except HotMeshError as error:
            return self.problem(request, 400, str(error))
        return _back(f"/runs/{quote(workflow_id, safe='')}", f"{action}: done")


def _back(url: str, note: str) -> Response:
    if not url.startswith("/") or url.startswith("//"):
        url = "/runs"  # only back to a page of this dashboard
    joiner = "&" if "?" in url else "?"
    return RedirectResponse(f"{url}{joiner}{urlencode({'note': note})}", status_code=303)


def _security_headers(app: Any) -> Any:
    """Adds a Content-Security-Policy (only this server's scripts and styles) and
    refuses framing, on every response."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (
                        b"content-security-policy",
                        b"default-src 'self'; script-src 'self'; style-src 'self';"
                        b" img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
                    ),
                    (b"x-frame-options", b"DENY"),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"same-origin"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await app(scope, receive, sending)

    return wrapped


def create_app(
    client: Client,
    *,
    allow_actions: bool = False,
    refresh: float = 2.0,
    allowed_hosts: list[str] | None = None,
    page_size: int = PAGE_SIZE,
) -> Any:
    """The dashboard over ``client``: an ASGI application (serve it with uvicorn).

    ``allowed_hosts``: the names the browser may use for this server (the
    ``Host`` header); default the loopback names. ``["*"]`` accepts any.
    """
    pages = _Pages(
        client,
        allow_actions=allow_actions,
        refresh=refresh,
        token=secrets.token_urlsafe(32),
        page_size=page_size,
    )
    static = StaticFiles(packages=[(PACKAGE, "static")])
    routes = [
        Route("/", pages.home),
        Route("/runs", pages.runs),
        Route("/runs/{workflow_id:path}", pages.run),
        Route("/memory/{workflow_id:path}", pages.memory),
        Route("/operations", pages.operations),
        Route("/actions/signal", pages.signal, methods=["POST"]),
        Route("/actions/interrupt/{workflow_id:path}", pages.interrupt, methods=["POST"]),
        Route("/actions/run/{action:str}/{workflow_id:path}", pages.run_action, methods=["POST"]),
        Mount("/static", app=static, name="static"),
    ]
    hosts = allowed_hosts or list(LOCAL_HOSTS)

    async def unavailable(request: Request, error: Exception) -> Response:
        # The database restarted or the network dropped: say so; the next
        # request (or the page's next live refresh) tries again.
        return pages.problem(request, 503, f"the backend is unavailable: {error}")

    app = Starlette(
        routes=routes,
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)],
        exception_handlers={BackendUnavailable: unavailable},
    )
    app.state.pages = pages
    return _security_headers(app)
