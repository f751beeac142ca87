"""The node API: HTTP + JSON over mutual TLS (HPE's port 30304), and Prometheus ``/metrics``.

Served by every SN node for SWCI, the dashboard and scripts (``curl --cert``). Reads are open
to any certificate of the swarm (the TLS handshake already checked it); writes are ledger
transactions, signed by their sender, so the API itself authorizes nothing: the ledger does.

Server: Hypercorn (a well-kept ASGI server with a native trio worker, HTTP/1.1 and HTTP/2)
running a Starlette application (routing and JSON on anyio, which runs on trio); metrics are
rendered by ``prometheus_client`` from a collector that reads the node's state at scrape time.
The endpoints are described in ``openapi.json`` beside this module, served at
``/v1/openapi.json``.

Limits (issue 19): the TLS handshake must end within ``HANDSHAKE_TIMEOUT_S`` (a refused one is
logged and counted, as on the other ports); a request body over ``TX_BYTES_MAX`` is refused
with 413 from its ``Content-Length``, or once that many bytes arrived, never read whole;
at most ``CONNECTIONS_MAX`` connections at once (more are closed at once, counted).
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import trio
from hypercorn.config import Config
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import wrap_app
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from swarmlearn.p2p.identity import Identity
from swarmlearn.p2p.tls import server_context
from swarmlearn.roles.api import task_views, views

if TYPE_CHECKING:
    from swarmlearn.roles.node.node import ValidatorNode

API_VERSION = "v1"
DEFAULT_API_PORT = 30304
WAIT_MAX_S = 120.0
TX_BYTES_MAX = 1024 * 1024
HANDSHAKE_TIMEOUT_S = 10.0
CONNECTIONS_MAX = 256

log = logging.getLogger(__name__)


@dataclass
class ApiCounters:
    """What the API refused (``/metrics``)."""

    handshakes_failed: int = 0
    connections_refused: int = 0
    bodies_refused: int = 0
    connections_open: int = 0
    protocol_errors: int = 0  # requests that were not HTTP: Hypercorn's own 400, then close


class _WatchedStream(trio.abc.Stream):
    """The TLS stream handed to Hypercorn, watched for the answer Hypercorn gives a request
    that is not HTTP (h11 refuses it): a 400 with no body type, then the connection closes.
    The API's own 400s are JSON, so they carry ``content-type`` and are not counted."""

    def __init__(self, stream: trio.SSLStream[trio.SocketStream], counters: ApiCounters) -> None:
        self.stream = stream
        self.counters = counters

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        head = bytes(data[:512]).lower()
        if head.startswith(b"http/1.1 400 ") and b"content-type:" not in head:
            self.counters.protocol_errors += 1
            log.info("refused an API request: not HTTP (400, connection closed)")
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.stream.aclose()

    # What Hypercorn asks of a TLS stream besides the Stream interface.
    async def do_handshake(self) -> None:
        await self.stream.do_handshake()

    def selected_alpn_protocol(self) -> str | None:
        protocol: str | None = self.stream.selected_alpn_protocol()
        return protocol

    @property
    def transport_stream(self) -> trio.SocketStream:
        return self.stream.transport_stream


class _BodyTooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (``_BodyTooLarge``) from ``Content-Length`` or as soon as
    more than ``limit`` bytes arrived."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _BodyTooLarge
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise _BodyTooLarge
    return bytes(body)


class _TLSConfig(Config):
    """Hypercorn's configuration with our TLS: 1.3 only, client certificates required."""

    def __init__(self, identity: Identity) -> None:
        super().__init__()
        self._identity = identity
        self.certfile = str(identity.paths.cert)
        self.keyfile = str(identity.paths.key)

    def create_ssl_context(self) -> ssl.SSLContext:
        context = server_context(self._identity)
        context.set_alpn_protocols(["h2", "http/1.1"])
        return context


def _json(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status)


def _error(status: int, message: str) -> JSONResponse:
    return _json({"error": message}, status)


def build_app(node: ValidatorNode, counters: ApiCounters | None = None) -> Starlette:
    counters = counters if counters is not None else ApiCounters()

    async def health(request: Request) -> JSONResponse:
        status = node.status()
        return _json({"status": "ok", "chain": status.chain_id, "height": status.height})

    async def status(request: Request) -> JSONResponse:
        s = node.status()
        return _json(
            {
                "node": s.node,
                "chain": s.chain_id,
                "height": s.height,
                "last_block_hash": s.last_block_hash.hex(),
                "app_hash": s.app_hash.hex(),
                "validators": list(s.validators),
                "peers": list(s.peers),
                "transactions": s.txs,
                "policing": node.network.police.snapshot(trio.current_time()),
            }
        )

    async def nodes(request: Request) -> JSONResponse:
        return _json(views.members(node.app))

    async def contracts(request: Request) -> JSONResponse:
        return _json(views.contracts(node.app))

    async def contract(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        found = [c for c in views.contracts(node.app) if c["name"] == name]
        return _json(found[0]) if found else _error(404, f"no contract {name!r}")

    async def rounds(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        found = [c for c in views.contracts(node.app) if c["name"] == name]
        return _json(found[0]["rounds"]) if found else _error(404, f"no contract {name!r}")

    async def perfdata(request: Request) -> JSONResponse:
        return _json(views.perfdata(node.app, request.query_params.get("contract")))

    async def refusals(request: Request) -> JSONResponse:
        return _json(views.refusals(node.app))

    async def tasks(request: Request) -> JSONResponse:
        return _json(task_views.tasks(node.app))

    async def task(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        found = task_views.task_named(node.app, name)
        return _error(404, f"no task {name!r}") if found is None else _json(found)

    async def taskrunners(request: Request) -> JSONResponse:
        return _json(task_views.runners(node.app))

    async def taskrunner(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        found = task_views.runner_named(node.app, name)
        return _error(404, f"no taskrunner {name!r}") if found is None else _json(found)

    async def transactions(request: Request) -> JSONResponse:
        try:
            wait_s = float(request.query_params.get("wait", "0"))
        except ValueError:
            return _error(400, "wait: expected a number of seconds")
        if not 0 <= wait_s <= WAIT_MAX_S:
            return _error(400, f"wait: expected 0..{WAIT_MAX_S:g} seconds")
        try:
            body = await _read_body(request, TX_BYTES_MAX)
        except _BodyTooLarge:
            counters.bodies_refused += 1
            log.info("refused an API request body over %d bytes", TX_BYTES_MAX)
            return _error(413, f"expected a signed transaction of 1..{TX_BYTES_MAX} bytes")
        if not body:
            return _error(400, f"expected a signed transaction of 1..{TX_BYTES_MAX} bytes")
        reply = await node.submit(body, wait_s)
        result = {"accepted": reply.accepted, "reason": reply.reason, "height": reply.height}
        return _json(result, 200 if reply.accepted else 422)

    async def peers(request: Request) -> JSONResponse:
        stats = node.network.statistics().to_json()  # the node's one p2p host
        ledger = node.ledger.statistics()  # the height, its round and step, the gossip meshes
        consensus = {key: ledger[key] for key in ("height", "round", "step", "mesh")}
        return _json({"ledger": list(node.status().peers), "p2p": stats, "consensus": consensus})

    async def openapi(request: Request) -> Response:
        document = resources.files("swarmlearn.roles.api").joinpath("openapi.json").read_text()
        return Response(document, media_type="application/json")

    async def metrics(request: Request) -> Response:
        registry = CollectorRegistry()
        registry.register(_NodeCollector(node, counters))
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    prefix = f"/{API_VERSION}"
    routes = [
        Route(f"{prefix}/health", health),
        Route(f"{prefix}/status", status),
        Route(f"{prefix}/nodes", nodes),
        Route(f"{prefix}/contracts", contracts),
        Route(f"{prefix}/contracts/{{name}}", contract),
        Route(f"{prefix}/contracts/{{name}}/rounds", rounds),
        Route(f"{prefix}/perfdata", perfdata),
        Route(f"{prefix}/refusals", refusals),
        Route(f"{prefix}/tasks", tasks),
        Route(f"{prefix}/tasks/{{name}}", task),
        Route(f"{prefix}/taskrunners", taskrunners),
        Route(f"{prefix}/taskrunners/{{name}}", taskrunner),
        Route(f"{prefix}/transactions", transactions, methods=["POST"]),
        Route(f"{prefix}/peers", peers),
        Route(f"{prefix}/openapi.json", openapi),
        Route("/metrics", metrics),
    ]
    return Starlette(routes=routes)


class _NodeCollector:
    """Prometheus metrics read from the node at scrape time."""

    def __init__(self, node: ValidatorNode, counters: ApiCounters) -> None:
        self.node = node
        self.counters = counters

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        node = self.node
        core = node.core
        yield _gauge("swarm_consensus_height", "Last committed ledger height.", core.height - 1)
        yield _gauge("swarm_peers", "Connected peer nodes.", len(node.network.peers()))
        yield _gauge("swarm_validators", "Validators at the current height.", len(core.validators))
        yield _gauge("swarm_members", "Members of the swarm registry.", len(node.app.state.members))
        rounds = GaugeMetricFamily(
            "swarm_rounds", "Sync rounds by status.", labels=["contract", "status"]
        )
        durations = GaugeMetricFamily(
            "swarm_round_duration_seconds",
            "Duration of the latest finished round.",
            labels=["contract"],
        )
        for name, contract in sorted(node.app.state.contracts.items()):
            counts: dict[str, int] = {}
            for record in contract.rounds.values():
                counts[record.status.value] = counts.get(record.status.value, 0) + 1
            for status_name, count in sorted(counts.items()):
                rounds.add_metric([name, status_name], count)
            finished = [r for r in contract.rounds.values() if r.finished_ms is not None]
            if finished:
                last = max(finished, key=lambda r: r.number)
                assert last.finished_ms is not None
                durations.add_metric([name], (last.finished_ms - last.opened_ms) / 1000)
        yield rounds
        yield durations
        traffic = node.network.traffic()
        yield _counter("swarm_bytes_sent", "Bytes sent to peers and clients.", traffic.bytes_sent)
        yield _counter("swarm_bytes_received", "Bytes received.", traffic.bytes_received)
        refused = sum(node.app.state.refused.values())
        yield _counter("swarm_transactions_refused", "Transactions the ledger refused.", refused)
        police = node.network.police
        yield _counter(
            "swarm_forged_transactions",
            "Forged transactions peers sent (bad signature, wrong chain, undecodable).",
            police.forged_total,
        )
        yield _counter(
            "swarm_peer_bans", "Peers banned for forged transactions.", police.bans_total
        )
        yield _gauge(
            "swarm_peers_banned",
            "Peers banned now.",
            len(police.banned(trio.current_time())),
        )
        yield _counter(
            "swarm_inputs_handled", "Inputs the consensus core handled.", node.driver.inputs_handled
        )
        yield _counter(
            "swarm_merge_partials_dropped",
            "Partial sums of global merge methods dropped (stale, duplicated or malformed).",
            node.node.sl.partials_dropped,
        )
        yield from _limit_metrics(node, self.counters)


def _limit_metrics(
    node: ValidatorNode, api: ApiCounters
) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    """What the node refused or cut off, by port (issue 19; docs/operations.md, Limits)."""
    traffic = node.network.traffic()
    refused = CounterMetricFamily(
        "swarm_refused",
        "Connections and frames refused or cut off, by port and reason.",
        labels=["port", "reason"],
    )
    for reason in (
        "handshakes_failed",
        "connections_refused",
        "frames_refused",
        "frame_timeouts",
        "idle_timeouts",
        "protocol_errors",
        "messages_dropped",
    ):
        refused.add_metric(["ledger", reason], getattr(traffic, reason))
    lanes = node.network.lanes
    for reason, count in sorted((lanes.statistics() if lanes else {}).items()):
        refused.add_metric(["lane", reason], count)
    refused.add_metric(["api", "handshakes_failed"], api.handshakes_failed)
    refused.add_metric(["api", "connections_refused"], api.connections_refused)
    refused.add_metric(["api", "bodies_refused"], api.bodies_refused)
    refused.add_metric(["api", "protocol_errors"], api.protocol_errors)
    yield refused
    budget = node.network.budget.statistics()
    yield _gauge(
        "swarm_bytes_in_flight",
        "Bytes of partial frames the ledger port holds beyond the connections' reserves.",
        budget.held_bytes,
    )
    yield _gauge(
        "swarm_lane_bytes_in_flight_peak",
        "Most bytes of partial frames the round lanes held at once.",
        lanes.inflight_peak_bytes if lanes else 0,
    )
    yield _gauge("swarm_threads", "Threads of the node process.", threading.active_count())
    yield from _lane_thread_metrics(lanes.thread_statistics() if lanes else {})


def _lane_thread_metrics(
    pools: dict[str, dict[str, int]],
) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    """The round lanes' thread pools (p2p/lane.py): live threads, and how they ended."""
    live = GaugeMetricFamily(
        "swarm_lane_threads", "Round lane threads running, by direction.", labels=["pool"]
    )
    ends = CounterMetricFamily(
        "swarm_lane_thread_ends",
        "Round lane threads ended (all), failed (a bug, logged in full), leaked (alive past"
        " their close), refused (over the pool), and lanes closed between frames (idle).",
        labels=["pool", "how"],
    )
    for pool, counts in sorted(pools.items()):
        live.add_metric([pool], counts["threads_live"])
        for how in ("ended", "failed", "leaked", "refused"):
            ends.add_metric([pool, how], counts[f"threads_{how}"])
        for how in ("peer_closed", "idle_closed"):
            if how in counts:
                ends.add_metric([pool, how], counts[how])
    yield live
    yield ends


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


async def serve_api(
    node: ValidatorNode,
    identity: Identity,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the API on ``host:port`` (0: any free port); ``task_status`` gets the address.

    Hypercorn's protocol server runs each connection once our handshake (under its deadline,
    refusals logged and counted) has succeeded."""
    config = _TLSConfig(identity)
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")  # the node's handlers (--log-format)
    config.ssl_handshake_timeout = HANDSHAKE_TIMEOUT_S
    counters = ApiCounters()
    app = wrap_app(build_app(node, counters), config.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]
    context = config.create_ssl_context()
    worker = WorkerContext(None)
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()

    async def connection(tcp: trio.SocketStream) -> None:
        if counters.connections_open >= CONNECTIONS_MAX:
            counters.connections_refused += 1
            log.info("refused an API connection: %d open", counters.connections_open)
            await trio.aclose_forcefully(tcp)
            return
        counters.connections_open += 1
        try:
            stream = trio.SSLStream(tcp, context, server_side=True, https_compatible=True)
            try:
                with trio.fail_after(HANDSHAKE_TIMEOUT_S):
                    await stream.do_handshake()
            except (trio.BrokenResourceError, trio.TooSlowError) as error:
                counters.handshakes_failed += 1
                log.info("refused an API connection: %s", _handshake_failure(error))
                await trio.aclose_forcefully(stream)
                return
            watched = _WatchedStream(stream, counters)
            # A TLS stream to Hypercorn in all it uses (TCPServer is typed on SSLStream).
            await TCPServer(app, config, worker, ConnectionState({}), watched)  # type: ignore[arg-type]
        finally:
            counters.connections_open -= 1

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, connection, listeners)
        # The line Hypercorn's own server logged, on its logger (the node's handlers).
        config.errorlog.info("Running on https://%s (CTRL + C to quit)", _url_host(bound))
        task_status.started((str(bound[0]), int(bound[1])))


def _url_host(bound: tuple[Any, ...]) -> str:
    host, port = str(bound[0]), int(bound[1])
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _handshake_failure(error: BaseException) -> str:
    if isinstance(error, trio.TooSlowError):
        return "TLS handshake timed out"
    cause = error.__cause__
    if isinstance(cause, ssl.SSLError):
        return f"TLS handshake failed: {cause.reason or cause}"
    return f"TLS handshake failed: {error or type(error).__name__}"
