"""The dashboard's side of the node API: reads over mutual TLS, failures a person can act on.

One :class:`Upstream` holds one HTTP client (httpx, on trio through anyio) that presents the
operator's certificate, as ``kubectl proxy`` does, so the browser needs none. Each read
returns the decoded JSON, or raises :class:`UpstreamError` whose ``kind`` says what went wrong
(``unreachable``, ``rejected``, ``untrusted``, ``timeout``, ``http``) and whose message says
what to do about it. :meth:`Upstream.snapshot` gathers what a page needs in one go, and reads
the ledger's views again only when the ledger's height has moved.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from swarmlearn.p2p.identity import Identity
from swarmlearn.p2p.tls import client_context

READ_TIMEOUT_S = 10.0
#: What each kind of read fetches; "tasks" and "taskrunners" may answer 404 (no SWOP yet).
SOURCES = {
    "status": "/v1/status",
    "nodes": "/v1/nodes",
    "contracts": "/v1/contracts",
    "perfdata": "/v1/perfdata",
    "tasks": "/v1/tasks",
    "taskrunners": "/v1/taskrunners",
    "metrics": "/metrics",
}
OPTIONAL = frozenset({"tasks", "taskrunners"})
#: Views of the ledger's state: they change only when its height does.
LEDGER_VIEWS = frozenset({"nodes", "contracts", "perfdata", "tasks", "taskrunners"})
RUNNER_DETAILS_MAX = 20  # taskrunners whose peers (state and reason) a snapshot reads


class UpstreamError(Exception):
    """A read from the node API failed; ``str()`` is one sentence saying what to do."""

    def __init__(self, kind: str, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


@dataclass
class Snapshot:
    """What the node API answered, by source name; ``None`` for an optional source it lacks."""

    api: str
    data: dict[str, Any] = field(default_factory=dict)
    fetched_ms: int = 0
    fetch_s: float = 0.0
    reused: int = 0  # ledger views taken from the previous read (the height had not moved)


def _ssl_errors(error: BaseException) -> list[ssl.SSLError]:
    found: list[ssl.SSLError] = []
    seen: set[int] = set()
    stack: list[BaseException | None] = [error]
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, ssl.SSLError):
            found.append(item)
        stack += [item.__cause__, item.__context__]
        stack += list(getattr(item, "exceptions", ()))
    return found


def explain(error: BaseException, api: str, me: str) -> UpstreamError:
    """The :class:`UpstreamError` for a failed request to ``api`` made as ``me``."""
    ssl_errors = _ssl_errors(error)
    verify = [e for e in ssl_errors if isinstance(e, ssl.SSLCertVerificationError)]
    if verify:
        return UpstreamError(
            "untrusted",
            f"the node at {api} presented a certificate that your CA does not sign "
            f"({verify[0].verify_message}): check --cacert / SWARM_ID_CACERT names this "
            "swarm's CA",
        )
    if ssl_errors or isinstance(error, httpx.RemoteProtocolError | httpx.ReadError):
        detail = ssl_errors[0].reason if ssl_errors else "it closed the connection"
        return UpstreamError(
            "rejected",
            f"the node at {api} rejected the certificate of {me} ({detail}): use a "
            "certificate issued by this swarm's CA (swarmlearn certs issue NAME --role swci)",
        )
    if isinstance(error, httpx.TimeoutException):
        return UpstreamError(
            "timeout",
            f"the node at {api} did not answer within {READ_TIMEOUT_S:g} s: is it overloaded "
            "or stopped?",
        )
    return UpstreamError(
        "unreachable",
        f"cannot reach the node API at {api} ({error or type(error).__name__}): is swarm-node "
        "running there with --api, and is the address right?",
    )


class Upstream:
    """Reads from one node API as ``identity``; use as ``async with``."""

    def __init__(self, identity: Identity, host: str, port: int) -> None:
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.api = f"https://{netloc}"
        self.me = identity.info.name
        self._http = httpx.AsyncClient(
            base_url=self.api, verify=client_context(identity), timeout=READ_TIMEOUT_S
        )
        self._lock = trio.Lock()
        self._height: int | None = None
        self._views: dict[str, Any] = {}

    async def __aenter__(self) -> Upstream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def forget(self) -> None:
        """Drop the ledger views read so far: the next snapshot reads them all again."""
        self._height = None
        self._views.clear()

    async def get(self, path: str, *, optional: bool = False) -> Any:
        """The JSON (or, for ``/metrics``, text) at ``path``; None if optional and 404."""
        try:
            response = await self._http.get(path)
        except httpx.HTTPError as error:
            raise explain(error, self.api, self.me) from error
        if response.status_code == 404 and optional:
            return None
        if response.status_code != 200:
            try:
                reason = response.json().get("error", response.reason_phrase)
            except ValueError:
                reason = response.reason_phrase
            raise UpstreamError(
                "http",
                f"the node at {self.api} answered {response.status_code} to {path}: {reason}",
                response.status_code,
            )
        if path == "/metrics":
            return response.text
        return response.json()

    async def snapshot(self, sources: tuple[str, ...]) -> Snapshot:
        """Every source in ``sources`` (names of :data:`SOURCES`), current as of this call.

        ``/v1/status`` is read every time; the ledger views (:data:`LEDGER_VIEWS`) are read
        again only when the ledger's height has moved since they were last read, so a watched
        swarm that is idle costs the node one small read per poll, however big its history."""
        async with self._lock:
            started = time.perf_counter()
            snap = Snapshot(self.api)
            status = await self.get(SOURCES["status"])
            if status.get("height") != self._height:
                self._views.clear()
                self._height = status.get("height")
            snap.data["status"] = status
            wanted = [n for n in sources if n != "status" and n not in self._views]
            errors: list[UpstreamError] = []

            async def one(name: str) -> None:
                try:
                    found = await self.get(SOURCES[name], optional=name in OPTIONAL)
                    if name == "taskrunners" and isinstance(found, list):
                        found = await self._runner_details(found)
                    snap.data[name] = found
                except UpstreamError as error:
                    errors.append(error)

            async with trio.open_nursery() as nursery:
                for name in wanted:
                    nursery.start_soon(one, name)
            if errors:
                raise min(errors, key=lambda e: e.kind != "rejected")  # the most telling one
            self._views.update({n: snap.data[n] for n in wanted if n in LEDGER_VIEWS})
            snap.data.update({n: self._views[n] for n in sources if n not in snap.data})
            snap.reused = len(sources) - len(wanted) - (1 if "status" in sources else 0)
            snap.fetched_ms = int(time.time() * 1000)
            snap.fetch_s = time.perf_counter() - started
            return snap

    async def _runner_details(self, runners: list[Any]) -> list[Any]:
        """Each taskrunner's detailed view (its peers, their states and reasons)."""
        detailed = list(runners)
        for index, runner in enumerate(runners[:RUNNER_DETAILS_MAX]):
            name = quote(str(runner.get("name", "")), safe="")
            found = await self.get(f"{SOURCES['taskrunners']}/{name}", optional=True)
            if isinstance(found, dict):
                detailed[index] = found
        return detailed


def traffic(metrics_text: str) -> dict[str, float]:
    """The node's byte counters from its Prometheus text (name without ``_total``: value)."""
    wanted = {"swarm_bytes_sent", "swarm_bytes_received"}
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name in wanted and family.samples:
            found[family.name] = family.samples[0].value
    return found
