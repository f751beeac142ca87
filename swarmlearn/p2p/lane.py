"""Lanes: blocking mutual-TLS connections driven by threads, and the pool that runs them.

Theory of operation
-------------------
trio's ``SSLStream`` moves about a third of what a blocking ``ssl.SSLSocket`` moves, because
every 16 KiB TLS record is a trip through the event loop (the one that also runs consensus).
So weights travel on *lanes*: extra mutual-TLS connections (the node's certificates, the
peer id and roles checked on both ends) written and read by plain threads with blocking
calls. OpenSSL, the socket calls and BLAKE3 release the GIL, so lanes encrypt, decrypt and
hash beside the event loop. The two bulk paths are built on what is here:
:mod:`~swarmlearn.p2p.bulk` (a blob *fetched* from several sources) and
:mod:`~swarmlearn.p2p.bulk_push` (a round's messages *pushed* to its participants).

- **Dialing** (:func:`dial_lane`): TCP connect within ``dial_timeout_s``, an optional first
  byte (the host's lane byte), the whole TLS handshake within ``handshake_timeout_s`` (a peer
  that answers a byte a second does not keep it open), then the peer id checked against the
  one the caller expects. A *reader* gets a :class:`TlsPipe`, a *writer* a plain
  ``ssl.SSLSocket``, whose ``sendall`` encrypts straight from the model's memory (a pipe
  would copy every byte twice more on the way out).
- **Accepting** (:func:`accept_lane`): the same handshake deadline, then the certificate:
  its roles must meet the lane's (``NODE_ROLES``: swarm nodes), and it must not be this node.
- **Reading**: :func:`read_within` fills a view within an :class:`Allowance` (seconds for the
  whole of what is read, not per call), so a peer that stops mid-frame is cut off at a
  deadline of the frame's size; :func:`receive_message` reads one small control frame under a
  size limit.
- **Threads** (:class:`LaneThreads`): every thread that serves a lane runs in a bounded pool.
  A start beyond ``threads_max`` is refused (the caller closes the socket and counts it);
  every end, clean or not, is counted (an unexpected exception is a bug: logged with its
  traceback and counted as ``failed``); :meth:`LaneThreads.close` shuts down the sockets the
  pool's threads hold and :meth:`LaneThreads.join` waits for them within a deadline, counting
  any that outlive it as ``leaked``. :class:`Acceptor` is a listener's accept loop on its own
  thread of the pool, handing each socket to a thread of another (or closing it when full).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from swarmlearn.errors import RemoteProtocolError
from swarmlearn.p2p.framing import FRAME_LEN, encode_frame
from swarmlearn.p2p.identity import CertificateInfo, Role
from swarmlearn.p2p.tls import peer_certificate_info
from swarmlearn.p2p.transfer import BytesLike
from swarmlearn.p2p.wire import HEADER_LEN, Message, decode_body

log = logging.getLogger(__name__)

IO_BYTES = 1 << 20  # socket reads and writes, and the most plaintext handed to OpenSSL at once
CONTROL_FRAME_BYTES_MAX = 1 << 20  # requests and manifests (a 1 TB blob's manifest: 8 MB)
ACCEPT_POLL_S = 0.2  # how often a blocked accept or budget wait looks at its stop flag
#: What a lane's I/O raises when the peer or the network fails it.
LANE_ERRORS = (OSError, ssl.SSLError, RemoteProtocolError, ValueError)


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
                    raw.settimeout(_left_s(deadline))
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

    def settimeout(self, timeout_s: float | None) -> None:
        self.raw.settimeout(timeout_s)

    def gettimeout(self) -> float | None:
        return self.raw.gettimeout()

    def getpeercert(self, binary_form: bool = True) -> bytes | None:
        """The peer's DER certificate (as ``ssl.SSLSocket.getpeercert(True)``)."""
        assert binary_form, "a lane checks the DER certificate itself"
        return self.tls.getpeercert(binary_form=True)

    def shutdown(self) -> None:
        """Unblock a thread reading or writing this connection (from another thread)."""
        with contextlib.suppress(OSError):
            self.raw.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.raw.close()


#: A lane's connection: a reader's :class:`TlsPipe` or a writer's ``ssl.SSLSocket``.
Conn = TlsPipe | ssl.SSLSocket
#: ``hold(sock)``: a socket the calling thread now blocks on (:meth:`LaneThreads.hold`).
Hold = Callable[["Conn | socket.socket"], object]


def _left_s(deadline: float) -> float:
    left_s = deadline - time.monotonic()
    if left_s <= 0:
        raise TimeoutError("TLS handshake timed out")
    return left_s


def _handshake_socket(
    raw: socket.socket,
    context: ssl.SSLContext,
    *,
    server_side: bool,
    timeout_s: float,
    hold: Hold | None = None,
) -> ssl.SSLSocket:
    """An ``ssl.SSLSocket`` whose whole handshake took under ``timeout_s`` (non-blocking
    steps, each waiting for what OpenSSL wants with what is left of the deadline)."""
    deadline = time.monotonic() + timeout_s
    # The SSLSocket takes ``raw``'s descriptor over (``raw`` is detached): closed here on
    # failure, as the caller's ``raw.close()`` would no longer close anything.
    tls = context.wrap_socket(raw, server_side=server_side, do_handshake_on_connect=False)
    try:
        if hold is not None:
            hold(tls)
        tls.setblocking(False)
        while True:
            try:
                tls.do_handshake()
                return tls
            except ssl.SSLWantReadError:
                select.select([tls], [], [], _left_s(deadline))
            except ssl.SSLWantWriteError:
                select.select([], [tls], [], _left_s(deadline))
    except BaseException:
        tls.close()
        raise


def check_peer(
    conn: Conn,
    *,
    expect: str | None = None,
    roles: frozenset[Role] | None = None,
    me: str | None = None,
) -> CertificateInfo:
    """Who is at the other end of ``conn``: ``RemoteProtocolError`` when it is not ``expect``,
    holds none of ``roles``, or is ``me``."""
    info = peer_certificate_info(conn.getpeercert(binary_form=True))
    if expect is not None and str(info.peer_id) != expect:
        raise RemoteProtocolError(f"expected peer {expect[:8]}, reached {info.peer_id.short}")
    if roles is not None and not info.roles & roles:
        raise RemoteProtocolError(f"{info.peer_id.short} has no role that may open this lane")
    if me is not None and str(info.peer_id) == me:
        raise RemoteProtocolError("a lane to this node itself")
    return info


def dial_lane(
    context: ssl.SSLContext,
    address: tuple[str, int],
    *,
    expect: str | None,
    reader: bool,
    dial_timeout_s: float,
    handshake_timeout_s: float,
    io_timeout_s: float | None,
    first_byte: bytes = b"",
    hold: Hold | None = None,
) -> Conn:
    """A lane to ``address``: connected, its handshake done within its deadline, the peer
    checked against ``expect`` (see the module doc); reads and writes then time out after
    ``io_timeout_s``. Raises one of :data:`LANE_ERRORS` (or ``TimeoutError``). With
    ``hold``, the socket is held from its connect on, so that a pool's close wakes a dial
    still in its handshake."""
    raw = socket.create_connection(address, timeout=dial_timeout_s)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        if hold is not None:
            hold(raw)
        if first_byte:
            raw.sendall(first_byte)
        if reader:
            conn: Conn = TlsPipe(
                raw, context, server_side=False, handshake_timeout_s=handshake_timeout_s
            )
        else:
            conn = _handshake_socket(
                raw, context, server_side=False, timeout_s=handshake_timeout_s, hold=hold
            )
    except BaseException:
        raw.close()
        raise
    try:
        conn.settimeout(io_timeout_s)
        check_peer(conn, expect=expect)
    except BaseException:
        conn.close()
        raise
    return conn


def accept_lane(
    raw: socket.socket,
    context: ssl.SSLContext,
    *,
    reader: bool,
    handshake_timeout_s: float,
    io_timeout_s: float | None,
    roles: frozenset[Role] | None,
    me: str | None,
) -> tuple[Conn, CertificateInfo]:
    """The server's half of :func:`dial_lane` on an accepted socket: the handshake within its
    deadline, the peer's roles checked. On failure the exception propagates (and the caller
    closes ``raw``, if this has not)."""
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if reader:
        raw.settimeout(io_timeout_s)
        conn: Conn = TlsPipe(
            raw, context, server_side=True, handshake_timeout_s=handshake_timeout_s
        )
    else:
        conn = _handshake_socket(raw, context, server_side=True, timeout_s=handshake_timeout_s)
    try:
        conn.settimeout(io_timeout_s)
        return conn, check_peer(conn, roles=roles, me=me)
    except BaseException:
        conn.close()
        raise


def lower_priority(nice: int) -> None:
    """Lower the calling thread's CPU priority (Linux: per-thread nice; elsewhere nothing),
    so that a node's message thread runs first when the cores are busy."""
    if nice and hasattr(os, "setpriority") and sys.platform == "linux":
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


# ---------------------------------------------------------------- reading and writing


class Allowance:
    """Seconds a peer has left to deliver what is being read (spent across reads)."""

    def __init__(self, seconds: float) -> None:
        self.left_s = seconds


def read_within(conn: Conn, view: memoryview, allowance: Allowance | None = None) -> None:
    """Fill ``view``; ``TimeoutError`` once the reads took ``allowance`` in all (without one,
    each read keeps the connection's own timeout, which it has again after one);
    ``ConnectionError`` at a close."""
    if allowance is None:
        _read_exact(conn, view, None)
        return
    timeout_s = conn.gettimeout()
    try:
        _read_exact(conn, view, allowance)
    finally:
        conn.settimeout(timeout_s)


def _read_exact(conn: Conn, view: memoryview, allowance: Allowance | None) -> None:
    got = 0
    while got < len(view):
        if allowance is not None:
            if allowance.left_s <= 0:
                raise TimeoutError(f"{len(view) - got} bytes of a frame did not arrive in time")
            conn.settimeout(allowance.left_s)
        started = time.monotonic()
        try:
            count = conn.recv_into(view[got:])
        finally:
            if allowance is not None:
                allowance.left_s -= time.monotonic() - started
        if not count:
            raise ConnectionError("connection closed mid-frame")
        got += count


def send_message(conn: Conn, message: Message) -> None:
    """One frame, written from views of the message (its payload is not copied)."""
    for part in encode_frame(message):
        conn.sendall(part)


def receive_message(
    conn: Conn, allowance: Allowance | None = None, size_max: int = CONTROL_FRAME_BYTES_MAX
) -> Message:
    """One small frame (a request, a manifest, a refusal), read exactly."""
    prefix = bytearray(FRAME_LEN.size)
    read_within(conn, memoryview(prefix), allowance)
    (size,) = FRAME_LEN.unpack(prefix)
    if not HEADER_LEN.size <= size <= size_max:
        raise RemoteProtocolError(f"control frame of {size} bytes")
    body = bytearray(size)
    read_within(conn, memoryview(body), allowance)
    return decode_body(body)


# ---------------------------------------------------------------- supervised threads


class LaneThreads:
    """A bounded pool of the threads that serve lanes (see the module doc)."""

    def __init__(self, name: str, threads_max: int) -> None:
        self.name = name
        self.threads_max = threads_max
        self.started = 0
        self.refused = 0  # starts over threads_max (or after close)
        self.ended = 0  # threads that returned or raised
        self.failed = 0  # ... of them, by an unexpected exception (a bug: logged in full)
        self.leaked = 0  # alive past join's deadline
        self._lock = threading.Lock()
        self._live: dict[threading.Thread, list[Conn | socket.socket]] = {}
        self._closed = False

    @property
    def live(self) -> int:
        with self._lock:
            return len(self._live)

    def start(
        self,
        target: Callable[..., object],
        *args: Any,
        name: str,
        holds: Conn | socket.socket | None = None,
    ) -> bool:
        """Run ``target(*args)`` on a thread of the pool; False (nothing started) when full or
        closed. ``holds``: a socket that :meth:`close` shuts down to end the thread."""
        with self._lock:
            if self._closed or len(self._live) >= self.threads_max:
                self.refused += 1
                return False
            thread = threading.Thread(target=self._run, args=(target, args), name=name)
            thread.daemon = True
            self._live[thread] = [] if holds is None else [holds]
            self.started += 1
        try:
            thread.start()
        except RuntimeError:  # the process has no thread left to give
            with self._lock:
                del self._live[thread]
                self.started -= 1
                self.refused += 1
            log.warning("%s: cannot start a thread", self.name)
            return False
        return True

    def hold(self, sock: Conn | socket.socket) -> None:
        """The calling thread (of this pool) now holds ``sock`` too: shut down at close (those
        it held and closed since are let go)."""
        with self._lock:
            held = self._live.get(threading.current_thread())
            closed = self._closed
            if held is not None:
                held[:] = [*(old for old in held if _fileno(old) != -1), sock]
        if closed:
            _shutdown(sock)

    def _run(self, target: Callable[..., object], args: tuple[Any, ...]) -> None:
        me = threading.current_thread()
        failed = False
        try:
            target(*args)
        except BaseException:
            failed = True
            log.exception("%s: thread %s failed", self.name, me.name)
        finally:
            with self._lock:
                self._live.pop(me, None)
                self.ended += 1
                self.failed += failed
        log.debug("%s: thread %s ended", self.name, me.name)

    def close(self) -> None:
        """Refuse new threads and shut down every socket the live ones hold (any thread;
        does not wait: see :meth:`join`)."""
        with self._lock:
            self._closed = True
            held = [sock for socks in self._live.values() for sock in socks]
        for sock in held:
            _shutdown(sock)

    def join(self, timeout_s: float | None) -> int:
        """Wait (blocking) up to ``timeout_s`` (None: until they end) for the live threads;
        those still alive are counted in ``leaked``, logged and returned. A pool that is
        to end waits after :meth:`close`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            threads = list(self._live)
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        alive = [thread.name for thread in threads if thread.is_alive()]
        if alive:
            with self._lock:
                self.leaked += len(alive)
            log.warning("%s: %d threads outlived their close: %s", self.name, len(alive), alive)
        return len(alive)

    def statistics(self) -> dict[str, int]:
        with self._lock:
            return {
                "threads_live": len(self._live),
                "threads_started": self.started,
                "threads_refused": self.refused,
                "threads_ended": self.ended,
                "threads_failed": self.failed,
                "threads_leaked": self.leaked,
            }


def _fileno(sock: Conn | socket.socket) -> int:
    return sock.raw.fileno() if isinstance(sock, TlsPipe) else sock.fileno()


def _shutdown(sock: Conn | socket.socket) -> None:
    with contextlib.suppress(OSError):
        if isinstance(sock, TlsPipe):
            sock.shutdown()
        else:
            sock.shutdown(socket.SHUT_RDWR)


class Acceptor:
    """A listener's accept loop, once :meth:`start` put it on a thread of ``threads``; each
    accepted socket goes to ``serve(raw)`` on a thread of ``connections`` (closed and counted
    in ``refused`` when that pool is full). :meth:`close` ends it and closes the listener."""

    def __init__(
        self,
        listener: socket.socket,
        serve: Callable[[socket.socket], object],
        connections: LaneThreads,
        threads: LaneThreads,
        *,
        on_refused: Callable[[], None] = lambda: None,
    ) -> None:
        self.listener = listener
        self.serve = serve
        self.connections = connections
        self.threads = threads
        self.on_refused = on_refused
        self._stop = threading.Event()
        listener.settimeout(ACCEPT_POLL_S)

    def start(self) -> bool:
        """Run the loop; False (and the listener closed) when ``threads`` is full or closed."""
        name = f"{self.connections.name}-accept"
        if self.threads.start(self._accept, name=name, holds=self.listener):
            return True
        self.listener.close()
        return False

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener was closed
            raw.settimeout(None)
            name = f"{self.connections.name}-{raw.fileno()}"
            if not self.connections.start(self._serve_one, raw, name=name, holds=raw):
                log.info("%s: refused a lane, %d served already", name, self.connections.live)
                self.on_refused()
                raw.close()

    def _serve_one(self, raw: socket.socket) -> None:
        try:
            self.serve(raw)
        finally:
            raw.close()

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
