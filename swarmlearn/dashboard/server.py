"""The dashboard's web server: pages on 127.0.0.1, fed by one node API over mutual TLS.

Hypercorn (trio worker) serves a Starlette app, as the node API does. Each page request reads
the API sources that page needs and renders it on the server; ``/events`` is a server-sent
event stream that re-reads them every ``interval_s`` and sends the sections that changed, so
the page updates in place. ``/proxy/v1/...`` passes reads through to the node API (GET only),
which is what ``kubectl proxy`` gives: the browser or ``curl`` needs no client certificate.
The server binds to the loopback address only and accepts only loopback Host headers: it
acts with the operator's certificate, so it must not be reachable from elsewhere.
"""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from swarmlearn.dashboard import render
from swarmlearn.dashboard.upstream import Snapshot, Upstream, UpstreamError

DEFAULT_PORT = 30310
LOOPBACK = "127.0.0.1"
INTERVAL_S = 1.0
STATIC = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}


@dataclass(frozen=True)
class Rendered:
    parts: dict[str, str]
    status: int


async def render_page(upstream: Upstream, name: str, query: dict[str, str]) -> Rendered:
    """The sections of page ``name``; status 502 when the API could not be read."""
    try:
        snap: Snapshot | None = await upstream.snapshot(render.PAGES[name][1])
        error = ""
    except UpstreamError as failure:
        snap, error = None, str(failure)
    return Rendered(render.sections(name, snap, error, query), 200 if snap else 502)


def build_app(upstream: Upstream, interval_s: float = INTERVAL_S) -> Starlette:
    def page_route(name: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            query = dict(request.query_params)
            done = await render_page(upstream, name, query)
            return HTMLResponse(render.page(name, done.parts, query), status_code=done.status)

        return endpoint

    async def events(request: Request) -> Response:
        query = dict(request.query_params)
        name = query.pop("page", "overview")
        if name not in render.PAGES:
            return JSONResponse({"error": f"page: expected one of {', '.join(render.PAGES)}"}, 400)
        return StreamingResponse(
            _stream(upstream, name, query, interval_s),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def proxy(request: Request) -> Response:
        path = "/" + request.path_params["path"]
        if request.url.query:
            path += "?" + request.url.query
        try:
            data = await upstream.get(path)
        except UpstreamError as failure:
            return JSONResponse({"error": str(failure)}, failure.status or 502)
        if isinstance(data, str):
            return Response(data, media_type="text/plain")
        return JSONResponse(data)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            return Response("not found", 404)
        cache = {"Cache-Control": "max-age=3600"}
        return Response(render.static_text(name), media_type=STATIC[name], headers=cache)

    routes = [Route(path, page_route(name)) for name, path in render.PATHS.items()]
    routes += [
        Route("/events", events),
        Route("/proxy/{path:path}", proxy),
        Route("/static/{name}", static),
    ]
    hosts = Middleware(TrustedHostMiddleware, allowed_hosts=[LOOPBACK, "localhost"])
    return Starlette(routes=routes, middleware=[hosts])


async def _stream(
    upstream: Upstream, name: str, query: dict[str, str], interval_s: float
) -> AsyncIterator[str]:
    """SSE ``update`` events: every section at first, then only those that changed."""
    sent: dict[str, str] = {}
    yield "retry: 2000\n\n"
    while True:
        done = await render_page(upstream, name, query)
        changed = {k: v for k, v in done.parts.items() if sent.get(k) != v}
        if changed:
            sent.update(changed)
            yield f"event: update\ndata: {json.dumps(changed)}\n\n"
        await trio.sleep(interval_s)


async def serve_dashboard(
    upstream: Upstream,
    port: int,
    *,
    interval_s: float = INTERVAL_S,
    shutdown: Callable[[], Awaitable[Any]] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve on 127.0.0.1:``port`` (0: any free port) until ``shutdown`` returns; the URL goes
    to ``task_status``."""
    config = Config()
    config.bind = [f"{LOOPBACK}:{port}"]
    config.accesslog = None
    config.errorlog = "-"
    config.graceful_timeout = 1.0
    app = build_app(upstream, interval_s)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: serve(
                app,  # type: ignore[arg-type]
                config,
                shutdown_trigger=shutdown,
                task_status=task_status,
            )
        )
        task_status.started(f"{binds[0]}/")


async def _until_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            return


async def run_dashboard(upstream: Upstream, port: int, out: Callable[[str], None]) -> None:
    """The ``swarmlearn dashboard`` command's body: check the API, serve, stop on a signal."""
    async with upstream:
        try:
            status = await upstream.get("/v1/status")
            out(f"node API {upstream.api}: chain {status['chain']}, height {status['height']}")
        except UpstreamError as failure:  # the page says it too, and keeps retrying
            out(f"warning: {failure}")
        async with trio.open_nursery() as nursery:
            url = await nursery.start(
                lambda task_status: serve_dashboard(
                    upstream, port, shutdown=_until_signal, task_status=task_status
                )
            )
            out(f"dashboard: {url} (Ctrl-C stops it)")
    out("dashboard stopped")
