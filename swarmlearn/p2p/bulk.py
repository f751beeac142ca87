"""The fast bulk path: blobs over dedicated blocking TLS connections, driven by threads.

Theory of operation
-------------------
trio's ``SSLStream`` moves about a third of what a blocking ``ssl.SSLSocket`` moves, because
every 16 KiB TLS record costs a trip through the event loop. So weights do not travel on the
node's message connection: a fetch opens ``lanes_per_source`` extra mutual-TLS connections
to each source (same certificates, same peer-id check) and drives each from a worker
thread with blocking calls. OpenSSL and hashlib release the GIL, so the lanes decrypt and
hash in parallel with each other and with the node's trio thread (a trio driver runs
:meth:`Fetch.run` under ``trio.to_thread.run_sync`` and keeps serving consensus messages).

A lane reads through a :class:`TlsPipe` (OpenSSL over memory BIOs, the socket read a
megabyte at a time); a source writes through a plain ``ssl.SSLSocket``. The protocol on a
lane is the node's: length-prefixed wire frames. The receiver sends
:class:`~swarmlearn.p2p.transfer.GetManifest` and
:class:`~swarmlearn.p2p.transfer.GetChunks`; the source answers with the manifest, or with
one ordinary :class:`~swarmlearn.p2p.messages.Chunk` frame per chunk, in the order asked,
written with ``sendall`` on views of the blob (the model's numpy buffer is never copied
whole). The receiver reads each frame's prefix and header exactly, checks index and size
against the manifest, then ``recv_into`` the chunk's own slot of the preallocated buffer
and hashes it there (:class:`~swarmlearn.p2p.transfer.Assembler`): the only copy of the
bytes is the one the kernel and OpenSSL make.

Scheduling is the sans-IO :class:`~swarmlearn.p2p.transfer.ChunkScheduler` (without the
endgame: a chunk is only ever written by the lane that asked for it), under one lock. Each
lane keeps ``window_chunks`` requested ahead so the pipe never drains. A bad chunk, a frame
out of order or an unknown blob bans the whole source; a broken connection returns the
lane's chunks to the pool and the lane redials (``reconnects_max`` times, backing off), so
a fetch resumes with only what is missing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from swarmlearn.errors import LocalProtocolError, RemoteProtocolError
from swarmlearn.p2p.framing import FRAME_LEN, FrameReader, encode_frame
from swarmlearn.p2p.identity import Identity, PeerId
from swarmlearn.p2p.messages import Chunk
from swarmlearn.p2p.tls import client_context, peer_certificate_info, server_context
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
from swarmlearn.p2p.wire import HEADER_LEN, Message, decode_body, decode_header

log = logging.getLogger(__name__)

CONTROL_FRAME_BYTES_MAX = 1 << 20  # requests and manifests (a 1 TB blob's manifest: 8 MB)
IO_BYTES = 1 << 20  # socket reads and writes, and the most plaintext handed to OpenSSL at once


class TlsPipe:
    """TLS over a blocking socket through OpenSSL memory BIOs.

    ``ssl.SSLSocket`` makes one or two system calls per 16 KiB record; here the socket is
    read and written up to :data:`IO_BYTES` at a time and OpenSSL works on memory, which cuts
    the receiver's CPU per gigabyte by about a sixth. Both OpenSSL and the socket calls
    release the GIL.
    """

    def __init__(
        self,
        raw: socket.socket,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        handshake_timeout_s: float | None = None,
    ) -> None:
        """Runs the handshake; with ``handshake_timeout_s``, all of it within that long (a
        peer that trickles a byte at a time is cut off: ``TimeoutError``), and the socket
        keeps the timeout it had."""
        self.raw = raw
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side)
        self._buffer = bytearray(IO_BYTES)
        self._view = memoryview(self._buffer)
        timeout_s = raw.gettimeout()
        deadline = None if handshake_timeout_s is None else time.monotonic() + handshake_timeout_s
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                if deadline is not None:
                    left_s = deadline - time.monotonic()
                    if left_s <= 0:
                        raise TimeoutError("TLS handshake timed out") from None
                    raw.settimeout(left_s)
                self._fill()
        self._flush()
        raw.settimeout(timeout_s)

    def __enter__(self) -> TlsPipe:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _fill(self) -> None:
        count = self.raw.recv_into(self._buffer)
        if not count:
            raise ConnectionError("connection closed")
        self._incoming.write(self._view[:count])

    def _flush(self) -> None:
        while self._outgoing.pending:
            self.raw.sendall(self._outgoing.read(IO_BYTES))

    def recv_into(self, view: memoryview | bytearray) -> int:
        """Decrypted bytes into ``view``: at least one, at most ``len(view)``; 0 at TLS close."""
        while True:
            try:
                return int(self.tls.read(len(view), view))
            except ssl.SSLWantReadError:
                self._fill()
            except ssl.SSLZeroReturnError:
                return 0

    def sendall(self, data: BytesLike) -> None:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), IO_BYTES):
            self.tls.write(view[start : start + IO_BYTES])
            self._flush()

    def peer_certificate(self) -> bytes | None:
        return self.tls.getpeercert(binary_form=True)

    def shutdown(self) -> None:
        """Unblock a thread reading or writing this connection (from another thread)."""
        with contextlib.suppress(OSError):
            self.raw.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.raw.close()


Dialer = Callable[[], TlsPipe]
#: The receiving side reads through a :class:`TlsPipe`; a source writes through a plain
#: ``ssl.SSLSocket``, whose ``sendall`` encrypts straight from the blob's memory (a pipe
#: would copy every byte twice more on the way out).
Conn = TlsPipe | ssl.SSLSocket


def dial_tls(
    identity: Identity,
    host: str,
    port: int,
    *,
    expect: PeerId | None = None,
    timeout_s: float = 30.0,
) -> TlsPipe:
    """A blocking mutual-TLS connection; refused when the peer is not ``expect``."""
    raw = socket.create_connection((host, port), timeout=timeout_s)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        pipe = TlsPipe(raw, client_context(identity), server_side=False)
        peer = peer_certificate_info(pipe.peer_certificate()).peer_id
    except (OSError, ssl.SSLError, RemoteProtocolError):
        raw.close()
        raise
    if expect is not None and peer != expect:
        pipe.close()
        raise RemoteProtocolError(f"expected peer {expect.short}, reached {peer.short}")
    return pipe


def lower_priority(nice: int) -> None:
    """Lower the calling thread's CPU priority (Linux: per-thread nice; elsewhere nothing),
    so that a node's message thread runs first when the cores are busy."""
    if nice and hasattr(os, "setpriority") and sys.platform == "linux":
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


def recv_exact(sock: Conn, view: memoryview) -> None:
    got = 0
    while got < len(view):
        count = sock.recv_into(view[got:])
        if not count:
            raise ConnectionError("connection closed mid-frame")
        got += count


def send_message(sock: Conn, message: Message) -> None:
    for part in encode_frame(message):
        sock.sendall(part)


def receive_message(sock: Conn) -> Message:
    """One small frame (a request, a manifest, a refusal), read exactly."""
    prefix = bytearray(FRAME_LEN.size)
    recv_exact(sock, memoryview(prefix))
    (size,) = FRAME_LEN.unpack(prefix)
    if not HEADER_LEN.size <= size <= CONTROL_FRAME_BYTES_MAX:
        raise RemoteProtocolError(f"control frame of {size} bytes")
    body = bytearray(size)
    recv_exact(sock, memoryview(body))
    return decode_body(body)


# ---------------------------------------------------------------- the source side


class BlobServer:
    """Serves blobs on bulk connections, one thread per connection."""

    def __init__(self, identity: Identity, *, timeout_s: float = 60.0, nice: int = 5) -> None:
        self.context = server_context(identity)
        self.timeout_s = timeout_s
        self.nice = nice
        self.blobs: dict[bytes, tuple[BlobManifest, memoryview]] = {}
        self.chunks_sent = 0
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
        """Accept until :meth:`stop`; each connection is served by its own thread."""
        listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self.serve_socket, args=(raw,), daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def serve_socket(self, raw: socket.socket) -> None:
        """Handshake on an accepted TCP socket and serve it until it closes (blocking; the
        socket is closed at the end). A trio listener hands bulk connections over here."""
        lower_priority(self.nice)
        raw.settimeout(self.timeout_s)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            with self.context.wrap_socket(raw, server_side=True) as tls:
                self.serve_connection(tls)
        except (OSError, ssl.SSLError, RemoteProtocolError) as error:
            log.debug("bulk connection ended: %s", error)
        finally:
            raw.close()

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
        threads = [threading.Thread(target=self._lane, args=(lane,)) for lane in self.lanes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
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
                except (OSError, ssl.SSLError, RemoteProtocolError, ValueError) as error:
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
        recv_exact(sock, memoryview(head))
        body_len, header_len = FRAME_LEN.unpack_from(head)[0], HEADER_LEN.unpack_from(head, 4)[0]
        if header_len > 1024 or header_len + HEADER_LEN.size > body_len:
            self._ban(lane, "malformed chunk frame")
        header = bytearray(header_len)
        recv_exact(sock, memoryview(header))
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
        recv_exact(sock, slot)
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
