"""The bulk-transfer core (sans-IO): serve blobs, fetch them from several peers, verified.

Theory of operation
-------------------
A node *serves* blobs it holds (``Request(ServeBlob(manifest, data))``: a view of the data,
never copied; each chunk goes out as a view of it) and *fetches* blobs by root
(``Request(FetchBlob(root, sources, manifest))``). A fetch without a manifest first asks
the sources for it, one at a time, and checks it against the root.

Then chunks are requested with :class:`~swarmlearn.p2p.transfer.GetChunks`, at most
``requests_per_source_max`` in flight per source, different chunks from different sources
(:class:`~swarmlearn.p2p.transfer.ChunkScheduler`), each with a deadline. Every chunk that
arrives goes through the :class:`~swarmlearn.p2p.transfer.Assembler`:

- accepted: held (the bitset), the source asked for more;
- a fault (out of range, wrong size, bad hash): the source is banned for this blob, its
  chunks go to the others, and ``Deliver(PeerMisbehaved(peer, reason))`` tells the node
  (which may disconnect or report it); so does a source flooding unrequested chunks;
- a duplicate: dropped (endgame duplicates are expected).

A request past its deadline sends the source's chunks back to the pool and rests the source
for ``retry_s``; a source that goes down (``PeerDown`` from the peer table) is dropped and
taken back when it comes up. The held chunks stay: a broken connection or partition costs
only the chunks that were in flight, and the fetch resumes where it was. A source answering
:class:`~swarmlearn.p2p.transfer.NoBlob` is dropped; with no source left, or past
``fetch_deadline_s``, the fetch fails (``Deliver(FetchFailed)``). A blob whose manifest is
over ``blob_bytes_max``, or that would take the fetches in progress over it, is refused.

The result is ``Deliver(BlobFetched(root, data))``, ``data`` a view of the assembled buffer.
One periodic timer (``("transfer", "tick")``) runs while any fetch is in progress.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from swarmlearn.errors import RemoteProtocolError
from swarmlearn.p2p.messages import Chunk
from swarmlearn.p2p.peertable import PeerDown, PeerUp
from swarmlearn.p2p.transfer import (
    Assembler,
    BlobManifest,
    BlobTooLarge,
    BytesLike,
    ChunkScheduler,
    GetChunks,
    GetManifest,
    ManifestReply,
    NoBlob,
)
from swarmlearn.p2p.wire import Message
from swarmlearn.sansio import (
    CancelTimer,
    Deliver,
    Effect,
    Input,
    Log,
    Metric,
    NodeId,
    Receive,
    Request,
    Send,
    SetTimer,
    TimerFired,
)

TICK = ("transfer", "tick")


@dataclass(frozen=True)
class ServeBlob:
    manifest: BlobManifest = field(repr=False)
    data: bytes | bytearray | memoryview = field(repr=False)


@dataclass(frozen=True)
class StopServing:
    root: bytes


@dataclass(frozen=True)
class FetchBlob:
    root: bytes
    sources: tuple[NodeId, ...]
    manifest: BlobManifest | None = field(default=None, repr=False)


@dataclass(frozen=True)
class CancelFetch:
    root: bytes


@dataclass(frozen=True)
class BlobFetched:
    root: bytes
    size: int
    data: memoryview = field(repr=False, compare=False)


@dataclass(frozen=True)
class FetchFailed:
    root: bytes
    reason: str


@dataclass(frozen=True)
class PeerMisbehaved:
    peer: NodeId
    reason: str


@dataclass(frozen=True)
class TransferConfig:
    blob_bytes_max: int = 2 * 1024**3  # per blob, and over all fetches in progress
    requests_per_source_max: int = 4
    request_timeout_s: float = 10.0
    retry_s: float = 2.0
    serve_chunks_max: int = 16  # chunks served per GetChunks
    tick_s: float = 0.5
    fetch_deadline_s: float | None = None


@dataclass
class _Fetch:
    root: bytes
    sources: list[NodeId]
    started_s: float
    assembler: Assembler | None = None
    scheduler: ChunkScheduler | None = None
    deadlines: dict[tuple[NodeId, int], float] = field(default_factory=dict)
    resting: dict[NodeId, float] = field(default_factory=dict)
    asked: tuple[NodeId, float] | None = None  # manifest asked of whom, until when
    unrequested: dict[NodeId, int] = field(default_factory=dict)


class TransferCore:
    """Serves and fetches verified blobs (see the module docstring)."""

    MESSAGES: tuple[type, ...] = (GetManifest, ManifestReply, GetChunks, NoBlob, Chunk)
    REQUESTS: tuple[type, ...] = (ServeBlob, StopServing, FetchBlob, CancelFetch)

    def __init__(
        self, me: NodeId, rng: random.Random, config: TransferConfig | None = None
    ) -> None:
        self.me = me
        self.rng = rng
        self.config = config or TransferConfig()
        self.serving: dict[bytes, tuple[BlobManifest, memoryview]] = {}
        self.fetches: dict[bytes, _Fetch] = {}
        self.down: set[NodeId] = set()
        self._ticking = False

    def handle(self, event: Input, now: float) -> list[Effect]:
        match event:
            case Request(ServeBlob(manifest, data)):
                self.serving[manifest.root] = (manifest, memoryview(data).cast("B"))
                return []
            case Request(StopServing(root)):
                self.serving.pop(root, None)
                return []
            case Request(FetchBlob() as request):
                return self._start(request, now)
            case Request(CancelFetch(root)):
                self.fetches.pop(root, None)
                return self._timer()
            case Request(PeerDown(peer)):
                self.down.add(peer)
                for fetch in self._active():
                    if fetch.scheduler is not None:
                        fetch.scheduler.remove(peer)
                        self._clear(fetch, peer)
                return []
            case Request(PeerUp(peer)):
                self.down.discard(peer)
                effects: list[Effect] = []
                for fetch in self._active():
                    if peer in fetch.sources and fetch.scheduler is not None:
                        fetch.scheduler.add_source(peer)
                        effects += self._pump(fetch, now)
                return effects
            case Receive(sender, message):
                return self._receive(sender, message, now)
            case TimerFired(tag) if tag == TICK:
                self._ticking = False
                return self._tick(now) + self._timer()
        return []

    def _receive(self, sender: NodeId, message: Message, now: float) -> list[Effect]:
        match message:
            case GetManifest(root):
                found = self.serving.get(root)
                return [Send(sender, found[0].to_message() if found else NoBlob(root, "unknown"))]
            case GetChunks(root, indexes):
                return self._serve(sender, root, indexes)
            case ManifestReply(root):
                fetch = self.fetches.get(root)
                if fetch is None or fetch.assembler is not None or fetch.asked is None:
                    return []
                if fetch.asked[0] != sender:
                    return []
                return self._got_manifest(fetch, sender, message, now)
            case NoBlob(root):
                fetch = self.fetches.get(root)
                return self._drop_source(fetch, sender, now) if fetch is not None else []
            case Chunk(blob, index, data):
                fetch = self.fetches.get(blob)
                if fetch is None or fetch.assembler is None:
                    return []
                return self._chunk(fetch, sender, index, data, now)
        return []

    # ------------------------------------------------------------ serving

    def _serve(self, peer: NodeId, root: bytes, indexes: tuple[int, ...]) -> list[Effect]:
        found = self.serving.get(root)
        if found is None:
            return [Send(peer, NoBlob(root, "unknown"))]
        manifest, data = found
        effects: list[Effect] = []
        for index in indexes[: self.config.serve_chunks_max]:
            if 0 <= index < manifest.chunk_count:
                start, stop = manifest.chunk_span(index)
                effects.append(Send(peer, Chunk(root, index, data[start:stop])))
        return effects

    # ------------------------------------------------------------ fetching

    def _active(self) -> list[_Fetch]:
        return [self.fetches[root] for root in sorted(self.fetches)]

    def _start(self, request: FetchBlob, now: float) -> list[Effect]:
        if request.root in self.fetches:
            return []
        fetch = _Fetch(request.root, sorted(set(request.sources) - {self.me}), now)
        self.fetches[request.root] = fetch
        if request.manifest is not None:
            return self._begin(fetch, request.manifest, now) + self._timer()
        return self._ask_manifest(fetch, now) + self._timer()

    def _ask_manifest(self, fetch: _Fetch, now: float) -> list[Effect]:
        candidates = [s for s in fetch.sources if s not in self.down and s not in fetch.resting]
        if not candidates:
            if not fetch.sources:
                return self._fail(fetch, "no source has the blob")
            fetch.asked = None
            return []
        source = self.rng.choice(candidates)
        fetch.asked = (source, now + self.config.request_timeout_s)
        return [Send(source, GetManifest(fetch.root))]

    def _got_manifest(
        self, fetch: _Fetch, sender: NodeId, reply: ManifestReply, now: float
    ) -> list[Effect]:
        try:
            manifest = BlobManifest.from_message(reply, fetch.root)
        except RemoteProtocolError as error:
            fetch.sources.remove(sender)
            fault = Deliver(PeerMisbehaved(sender, str(error)))
            return [fault, *self._ask_manifest(fetch, now)]
        return self._begin(fetch, manifest, now)

    def _begin(self, fetch: _Fetch, manifest: BlobManifest, now: float) -> list[Effect]:
        others = sum(f.assembler.manifest.total_bytes for f in self.fetches.values() if f.assembler)
        try:
            fetch.assembler = Assembler(manifest, bytes_max=self.config.blob_bytes_max - others)
        except BlobTooLarge as error:
            return self._fail(fetch, str(error))
        fetch.asked = None
        sources = [s for s in fetch.sources if s not in self.down]
        per_source = self.config.requests_per_source_max
        fetch.scheduler = ChunkScheduler(fetch.assembler.missing(), sources, per_source)
        if fetch.assembler.complete:
            return self._finish(fetch)
        return self._pump(fetch, now)

    def _pump(self, fetch: _Fetch, now: float) -> list[Effect]:
        """Ask every usable source for as many chunks as it may have in flight."""
        scheduler = fetch.scheduler
        if scheduler is None:
            return []
        effects: list[Effect] = []
        for source in scheduler.sources():
            if fetch.resting.get(source, -1.0) > now or source in self.down:
                continue
            chunks = scheduler.assign(source)
            if chunks:
                deadline = now + self.config.request_timeout_s
                for index in chunks:
                    fetch.deadlines[(source, index)] = deadline
                effects.append(Send(source, GetChunks(fetch.root, tuple(chunks))))
        return effects

    def _chunk(
        self, fetch: _Fetch, sender: NodeId, index: int, data: BytesLike, now: float
    ) -> list[Effect]:
        assembler, scheduler = fetch.assembler, fetch.scheduler
        assert assembler is not None
        assert scheduler is not None
        if fetch.deadlines.pop((sender, index), None) is None:
            count = fetch.unrequested.get(sender, 0) + 1
            fetch.unrequested[sender] = count
            if count > 2 * self.config.requests_per_source_max:
                return self._ban(fetch, sender, "unrequested chunks", now)
            return []
        verdict = assembler.offer(index, data)
        if verdict.is_fault:
            return self._ban(fetch, sender, f"chunk {index}: {verdict.value}", now)
        scheduler.delivered(sender, index)
        if assembler.complete:
            return self._finish(fetch)
        return [Metric("transfer.chunks", 1), *self._pump(fetch, now)]

    def _ban(self, fetch: _Fetch, peer: NodeId, reason: str, now: float) -> list[Effect]:
        assert fetch.scheduler is not None
        fetch.scheduler.remove(peer, ban=True)
        self._clear(fetch, peer)
        if peer in fetch.sources:
            fetch.sources.remove(peer)
        effects: list[Effect] = [
            Deliver(PeerMisbehaved(peer, reason)),
            Log("source banned", "warning", {"peer": peer, "reason": reason}),
        ]
        if not fetch.scheduler.sources():
            return effects + self._fail(fetch, "every source failed")
        return effects + self._pump(fetch, now)

    def _drop_source(self, fetch: _Fetch, source: NodeId, now: float) -> list[Effect]:
        if source in fetch.sources:
            fetch.sources.remove(source)
        if fetch.scheduler is None:
            if fetch.asked is not None and fetch.asked[0] == source:
                return self._ask_manifest(fetch, now)
            return []
        fetch.scheduler.remove(source)
        self._clear(fetch, source)
        if not fetch.scheduler.sources():
            return self._fail(fetch, "no source has the blob")
        return self._pump(fetch, now)

    def _clear(self, fetch: _Fetch, source: NodeId) -> None:
        for key in [key for key in fetch.deadlines if key[0] == source]:
            del fetch.deadlines[key]

    def _finish(self, fetch: _Fetch) -> list[Effect]:
        assert fetch.assembler is not None
        del self.fetches[fetch.root]
        buffer = fetch.assembler.buffer
        return [Deliver(BlobFetched(fetch.root, len(buffer), buffer)), *self._timer()]

    def _fail(self, fetch: _Fetch, reason: str) -> list[Effect]:
        self.fetches.pop(fetch.root, None)
        return [Deliver(FetchFailed(fetch.root, reason)), Log("fetch failed", "warning")]

    # ------------------------------------------------------------ time

    def _timer(self) -> list[Effect]:
        if self.fetches and not self._ticking:
            self._ticking = True
            return [SetTimer(TICK, self.config.tick_s)]
        if not self.fetches and self._ticking:
            self._ticking = False
            return [CancelTimer(TICK)]
        return []

    def _tick(self, now: float) -> list[Effect]:
        effects: list[Effect] = []
        for fetch in self._active():
            deadline = self.config.fetch_deadline_s
            if deadline is not None and now - fetch.started_s > deadline:
                effects += self._fail(fetch, "deadline passed")
                continue
            if fetch.scheduler is None:
                if fetch.asked is None or fetch.asked[1] <= now:
                    if fetch.asked is not None:
                        fetch.resting[fetch.asked[0]] = now + self.config.retry_s
                    fetch.resting = {s: t for s, t in fetch.resting.items() if t > now}
                    effects += self._ask_manifest(fetch, now)
                continue
            late = sorted({s for (s, _), t in fetch.deadlines.items() if t <= now})
            for source in late:  # it stopped answering: its chunks go to others, it rests
                fetch.scheduler.remove(source)
                self._clear(fetch, source)
                fetch.resting[source] = now + self.config.retry_s
                fetch.scheduler.add_source(source)
            effects += self._pump(fetch, now)
        return effects
