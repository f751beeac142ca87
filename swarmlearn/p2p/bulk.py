"""The fetch path: a blob pulled from several sources over lanes, every chunk verified.

Theory of operation
-------------------
A fetch (the merged model a late joiner or a restarted node needs, a blob of the p2p service)
opens ``lanes_per_source`` lanes (:mod:`swarmlearn.p2p.lane`: blocking mutual-TLS
connections driven by threads, handshake deadline, peer id checked) to each source and
drives each from a worker thread. A trio driver runs :meth:`Fetch.run` under
``trio.to_thread.run_sync`` and keeps serving consensus messages meanwhile.

The protocol on a lane is the node's: length-prefixed wire frames. The receiver sends
:class:`~swarmlearn.p2p.transfer.GetManifest` and
:class:`~swarmlearn.p2p.transfer.GetChunks`; the source answers with the manifest, or with
one ordinary :class:`~swarmlearn.p2p.messages.Chunk` frame per chunk, in the order asked,
written with ``sendall`` on views of the blob (the model's numpy buffer is never copied
whole). The receiver reads each frame's prefix and header exactly, checks index and size
against the manifest, then reads the chunk into its own slot of the preallocated buffer
within a deadline of its size and hashes it there
(:class:`~swarmlearn.p2p.transfer.Assembler`): the only copy of the bytes is the one the
kernel and OpenSSL make.

Scheduling is the sans-IO :class:`~swarmlearn.p2p.transfer.ChunkScheduler` (without the
endgame: a chunk is only ever written by the lane that asked for it), under one lock. Each
lane keeps ``window_chunks`` requested ahead so the pipe never drains. A bad chunk, a frame
out of order or an unknown blob bans the whole source; a broken connection returns the
lane's chunks to the pool and the lane redials (``reconnects_max`` times, backing off), so
a fetch resumes with only what is missing.

A source (:class:`BlobServer`) serves each accepted lane on a thread of a bounded
:class:`~swarmlearn.p2p.lane.LaneThreads` pool; only swarm nodes (``NODE_ROLES``) get one.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from swarmlearn.errors import LocalProtocolError, RemoteProtocolError
from swarmlearn.p2p.framing import FRAME_LEN, FrameReader
from swarmlearn.p2p.identity import NODE_ROLES, Identity, PeerId, Role
from swarmlearn.p2p.lane import (
    CONTROL_FRAME_BYTES_MAX,
    LANE_ERRORS,
    Acceptor,
    Allowance,
    Conn,
    LaneThreads,
    TlsPipe,
    accept_lane,
    dial_lane,
    lower_priority,
    read_within,
    receive_message,
    send_message,
)
from swarmlearn.p2p.messages import Chunk
from swarmlearn.p2p.tls import client_context, server_context
from swarmlearn.p2p.transfer import (
    Assembler,
    BlobManifest,
    BytesLike,
    ChunkScheduler,
    GetChunks,
    GetManifest,
    ManifestReply,
    NoBlob,
)
from swarmlearn.p2p.wire import HEADER_LEN, Message, decode_header

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 10.0  # a source's handshake, all of it
CHUNK_TIMEOUT_S = 10.0  # one chunk's reads may take this, plus a second per
CHUNK_RATE_MIN_BYTES_S = 1024 * 1024  # ... this many bytes of it
SERVER_THREADS_MAX = 64  # lanes a source serves at once (a thread each); more are closed

Dialer = Callable[[], TlsPipe]


def dial_tls(
    identity: Identity,
    host: str,
    port: int,
    *,
    expect: PeerId | None = None,
    timeout_s: float = 30.0,
) -> TlsPipe:
    """A fetch's lane to ``host:port`` (:func:`~swarmlearn.p2p.lane.dial_lane`, as a reader);
    refused when the peer is not ``expect``."""
    conn = dial_lane(
        client_context(identity),
        (host, port),
        expect=None if expect is None else str(expect),
        reader=True,
        dial_timeout_s=timeout_s,
        handshake_timeout_s=timeout_s,
        io_timeout_s=timeout_s,
    )
    assert isinstance(conn, TlsPipe)
    return conn


# ---------------------------------------------------------------- the source side


class BlobServer:
    """Serves blobs on lanes, each on a thread of a bounded pool (see the module doc)."""

    def __init__(
        self,
        identity: Identity,
        *,
        timeout_s: float = 60.0,
        nice: int = 5,
        threads_max: int = SERVER_THREADS_MAX,
        roles: frozenset[Role] = NODE_ROLES,
    ) -> None:
        self.context = server_context(identity)
        self.me = str(identity.peer_id)
        self.timeout_s = timeout_s  # a request's wait, and every write
        self.nice = nice
        self.roles = roles
        self.blobs: dict[bytes, tuple[BlobManifest, memoryview]] = {}
        self.chunks_sent = 0
        self.handshakes_failed = 0  # timed out, or no node certificate
        self.idle_closed = 0  # lanes silent for timeout_s: closed
        self.threads = LaneThreads("blob-lanes", threads_max)
        self._accepting = LaneThreads("blob-accept", 1)
        self._acceptor: Acceptor | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def add(self, manifest: BlobManifest, data: BytesLike) -> None:
        """Serve ``data`` (kept as a view: it must not change while served)."""
        with self._lock:
            self.blobs[manifest.root] = (manifest, memoryview(data).cast("B"))

    def remove(self, root: bytes) -> None:
        with self._lock:
            self.blobs.pop(root, None)

    def serve_forever(self, listener: socket.socket) -> None:
        """Accept on ``listener`` until :meth:`stop` (blocking); each lane on a thread of the
        pool, or closed at once when the pool is full."""
        acceptor = Acceptor(listener, self.serve_socket, self.threads, self._accepting)
        self._acceptor = acceptor
        if acceptor.start():  # else: stopped already
            self._accepting.join(None)

    def take(self, raw: socket.socket) -> bool:
        """Serve an accepted TCP socket on a thread of the pool; False (the caller closes it)
        when the pool is full."""
        name = f"blob-lane-{raw.fileno()}"
        return self.threads.start(self._serve_taken, raw, name=name, holds=raw)

    def _serve_taken(self, raw: socket.socket) -> None:
        try:
            self.serve_socket(raw)
        finally:
            raw.close()

    def stop(self) -> None:
        """Stop accepting and end every lane's thread (without waiting: :meth:`join`)."""
        self._stop.set()
        if self._acceptor is not None:
            self._acceptor.close()
        self._accepting.close()
        self.threads.close()

    def join(self, timeout_s: float) -> int:
        """Wait for the threads after :meth:`stop`; how many outlived ``timeout_s``."""
        return self._accepting.join(timeout_s) + self.threads.join(timeout_s)

    def serve_socket(self, raw: socket.socket) -> None:
        """Handshake on an accepted TCP socket and serve it until it closes (blocking; the
        caller closes ``raw``)."""
        lower_priority(self.nice)
        try:
            tls, peer = accept_lane(
                raw,
                self.context,
                reader=False,
                handshake_timeout_s=min(HANDSHAKE_TIMEOUT_S, self.timeout_s),
                io_timeout_s=self.timeout_s,
                roles=self.roles,
                me=None,
            )
        except LANE_ERRORS as error:
            self.handshakes_failed += 1
            log.info("refused a blob lane: %s", error or type(error).__name__)
            return
        self.threads.hold(tls)
        try:
            self.serve_connection(tls)
        except TimeoutError:
            self.idle_closed += 1
            log.debug("blob lane of %s idle: closed", peer.peer_id.short)
        except LANE_ERRORS as error:
            log.debug("blob lane of %s ended: %s", peer.peer_id.short, error)
        finally:
            tls.close()

    def serve_connection(self, tls: Conn) -> None:
        """Answer requests on one connection until it closes."""
        reader = FrameReader(CONTROL_FRAME_BYTES_MAX)
        buffer = bytearray(64 * 1024)
        while not self._stop.is_set():
            count = tls.recv_into(buffer)
            if not count:
                return
            reader.feed(buffer[:count])
            while (message := reader.next_message()) is not None:
                self._answer(tls, message)

    def _answer(self, tls: Conn, message: Message) -> None:
        match message:
            case GetManifest(root):
                found = self.blobs.get(root)
                send_message(tls, found[0].to_message() if found else NoBlob(root, "unknown"))
            case GetChunks(root, indexes):
                found = self.blobs.get(root)
                if found is None:
                    send_message(tls, NoBlob(root, "unknown"))
                    return
                manifest, data = found
                for index in indexes:
                    if not 0 <= index < manifest.chunk_count:
                        send_message(tls, NoBlob(root, f"no chunk {index}"))
                        return
                    start, stop = manifest.chunk_span(index)
                    send_message(tls, Chunk(root, index, data[start:stop]))
                    self.chunks_sent += 1
            case _:
                raise RemoteProtocolError(f"unexpected {type(message).__name__} on a bulk lane")


# ---------------------------------------------------------------- the receiving side


@dataclass(frozen=True)
class Source:
    name: str  # for logs and results (the peer id's printed form on real nodes)
    dial: Dialer


@dataclass
class FetchResult:
    complete: bool
    data: memoryview
    elapsed_s: float
    banned: dict[str, str] = field(default_factory=dict)  # source -> why
    chunks_from: dict[str, int] = field(default_factory=dict)
    wasted_bytes: int = 0


class _Banned(Exception):
    pass


class Fetch:
    """One blob fetched from several sources over blocking TLS lanes (see module doc)."""

    def __init__(
        self,
        manifest: BlobManifest,
        sources: Sequence[Source],
        *,
        bytes_max: int,
        buffer: bytearray | memoryview | None = None,
        lanes_per_source: int = 2,
        window_chunks: int = 4,
        reconnects_max: int = 3,
        nice: int = 5,
        resume: bytes | None = None,
    ) -> None:
        if not sources or lanes_per_source < 1:
            raise LocalProtocolError("need at least one source and one lane per source")
        self.assembler = Assembler(manifest, bytes_max=bytes_max, buffer=buffer)
        if resume is not None:  # chunks an earlier fetch left in ``buffer`` (re-verified)
            self.assembler.resume(resume)
        self.manifest = manifest
        self.sources = {source.name: source for source in sources}
        self.lanes = [f"{s.name}#{k}" for s in sources for k in range(lanes_per_source)]
        missing = self.assembler.missing()
        self.scheduler = ChunkScheduler(missing, self.lanes, window_chunks, endgame=False)
        self.reconnects_max = reconnects_max
        self.nice = nice
        self.banned: dict[str, str] = {}
        self._lock = threading.Condition()
        self._sockets: dict[str, TlsPipe] = {}
        self._cancelled = False

    def run(self) -> FetchResult:
        """Fetch until complete or every lane has given up (blocking; threads inside)."""
        start = time.perf_counter()
        threads = LaneThreads("fetch", len(self.lanes))
        for lane in self.lanes:
            threads.start(self._lane, lane, name=f"fetch-{lane[:8]}#{lane.rsplit('#', 1)[1]}")
        threads.join(None)  # each lane ends: its source done, given up, or banned
        chunks_from: dict[str, int] = {}
        for lane, count in self.scheduler.fetched_from.items():
            name = lane.rsplit("#", 1)[0]
            chunks_from[name] = chunks_from.get(name, 0) + count
        return FetchResult(
            self.assembler.complete,
            self.assembler.buffer,
            time.perf_counter() - start,
            dict(self.banned),
            chunks_from,
            self.assembler.wasted_bytes,
        )

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            for sock in self._sockets.values():
                sock.shutdown()
            self._lock.notify_all()

    def _lane(self, lane: str) -> None:
        lower_priority(self.nice)
        source = lane.rsplit("#", 1)[0]
        failures = 0
        try:
            while failures <= self.reconnects_max and not self._finished(source):
                try:
                    with self.sources[source].dial() as sock:
                        with self._lock:
                            self._sockets[lane] = sock
                        self._pump(lane, sock)
                        return
                except _Banned:
                    return
                except LANE_ERRORS as error:
                    failures += 1
                    log.info("bulk lane %s failed (%d): %s", lane, failures, error)
                    with self._lock:
                        self.scheduler.remove(lane)
                        self.scheduler.add_source(lane)
                        self._lock.notify_all()
                    time.sleep(min(0.1 * 2**failures, 2.0))
                finally:
                    with self._lock:
                        self._sockets.pop(lane, None)
        finally:
            # Only this thread writes into the slots of this lane's chunks, so only now may
            # they go to another lane (a banned lane may still have been reading one).
            with self._lock:
                self.scheduler.remove(lane, ban=source in self.banned)
                self._lock.notify_all()

    def _lane_stopped(self, lane: str) -> bool:
        """Under the lock: the lane was removed, or its source banned by another lane."""
        return lane not in self.scheduler.in_flight or lane.rsplit("#", 1)[0] in self.banned

    def _finished(self, source: str) -> bool:
        with self._lock:
            return self._cancelled or source in self.banned or self.assembler.complete

    def _pump(self, lane: str, sock: TlsPipe) -> bool:
        """Request ahead and receive in order until nothing is left for this lane."""
        pending: deque[int] = deque()
        root = self.manifest.root
        while True:
            with self._lock:
                while True:
                    if self._cancelled or self._lane_stopped(lane):
                        return True
                    more = self.scheduler.assign(lane)
                    if more or pending or self.scheduler.remaining == 0:
                        break
                    self._lock.wait(0.5)  # others' chunks may come back to the pool
            if more:
                send_message(sock, GetChunks(root, tuple(more)))
                pending.extend(more)
            if not pending:
                return True
            self._receive_chunk(lane, sock, pending.popleft())

    def _receive_chunk(self, lane: str, sock: TlsPipe, index: int) -> None:
        head = bytearray(FRAME_LEN.size + HEADER_LEN.size)
        read_within(sock, memoryview(head))
        body_len, header_len = FRAME_LEN.unpack_from(head)[0], HEADER_LEN.unpack_from(head, 4)[0]
        if header_len > 1024 or header_len + HEADER_LEN.size > body_len:
            self._ban(lane, "malformed chunk frame")
        header = bytearray(header_len)
        read_within(sock, memoryview(header))
        size = body_len - HEADER_LEN.size - header_len
        message = decode_header(header)
        if isinstance(message, NoBlob):
            self._ban(lane, f"no blob: {message.reason}")
        if not isinstance(message, Chunk) or message.blob != self.manifest.root:
            self._ban(lane, "unexpected frame")
        assert isinstance(message, Chunk)
        if message.index != index or self.assembler.check(index, size) is not None:
            self._ban(lane, f"chunk {message.index} ({size} bytes) where {index} was due")
        slot = self.assembler.slot(index)
        read_within(sock, slot, Allowance(CHUNK_TIMEOUT_S + size / CHUNK_RATE_MIN_BYTES_S))
        good = self.assembler.verify(index)  # hashing releases the GIL: lanes run in parallel
        with self._lock:
            if not good:
                self._ban_locked(lane, f"chunk {index}: bad hash")
            if self._lane_stopped(lane):  # banned meanwhile: its chunks are not trusted
                raise _Banned(self.banned.get(lane.rsplit("#", 1)[0], "stopped"))
            self.assembler.mark(index, size)
            self.scheduler.delivered(lane, index)
            self._lock.notify_all()

    def _ban(self, lane: str, reason: str) -> None:
        with self._lock:
            self._ban_locked(lane, reason)

    def _ban_locked(self, lane: str, reason: str) -> None:
        source = lane.rsplit("#", 1)[0]
        self.banned.setdefault(source, reason)
        # The source's other lanes are woken (their sockets shut down); each gives its chunks
        # back when its thread stops writing (see _lane), so no two lanes share a slot.
        for other in [name for name in self.scheduler.sources() if name.startswith(source + "#")]:
            sock = self._sockets.get(other)
            if sock is not None and other != lane:
                sock.shutdown()
        self._lock.notify_all()
        raise _Banned(reason)


def fetch_manifest(dial: Dialer, root: bytes) -> BlobManifest:
    """Ask a source for a blob's manifest over a bulk connection, checked against ``root``."""
    with dial() as sock:
        send_message(sock, GetManifest(root))
        reply = receive_message(sock)
    if isinstance(reply, NoBlob):
        raise RemoteProtocolError(f"source has no blob {root.hex()[:16]}: {reply.reason}")
    if not isinstance(reply, ManifestReply):
        raise RemoteProtocolError(f"expected a manifest, got {type(reply).__name__}")
    return BlobManifest.from_message(reply, root)
