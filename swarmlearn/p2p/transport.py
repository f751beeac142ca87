"""Mutual-TLS transport (trio driver): authenticated, framed message streams.

Theory of operation
-------------------
A :class:`Connection` is one TLS 1.3 stream (certificates required and verified
on both sides) carrying frames from :mod:`swarmlearn.p2p.framing`. The peer's
identity (peer id, roles) comes from its verified certificate and is known
before the first message. :func:`connect_stream` and :func:`accept_stream` run
the handshake over any trio ``Stream`` (a TCP socket, or
``trio.testing.memory_stream_pair`` in tests) under a deadline; :func:`dial`
and :class:`Listener` add TCP.

What a peer can do wrong, and what happens:

- handshake fails (no certificate, another CA, expired, TLS 1.2) or runs past
  ``handshake_timeout_s``: the stream is closed, ``handshakes_failed`` counts
  it, a listener goes on serving others;
- a frame length over ``frame_bytes_max`` or over its message type's limit, a
  frame the node's budget of bytes in flight cannot hold (see
  :mod:`swarmlearn.p2p.limits`), the stream ending mid-frame, or a whole frame
  that does not decode to a valid message: the connection is closed,
  ``protocol_errors`` (and ``frames_refused`` or ``messages_dropped``) counts it,
  and ``receive`` raises :class:`RemoteProtocolError`;
- a peer that stops mid-frame: the reads of one frame may take
  ``frame_timeout_s`` plus one second per ``frame_rate_min_bytes_s`` of its length
  (only the time spent waiting on the peer counts, not the time the node took
  between reads); past it the connection is closed and ``frame_timeouts`` counts
  it. With ``idle_timeout_s``, a peer that sends nothing between frames for that
  long is closed too (``idle_timeouts``);
- more than ``connections_max`` connections (or ``handshakes_max`` handshakes) at
  once on a listener: the new one is closed at once, ``connections_refused``.

``receive`` raises ``trio.EndOfChannel`` when the peer closed cleanly and
``trio.BrokenResourceError`` when the transport broke. Sends from several tasks
are serialized, so frames never interleave. A send waits while the peer does not
read (TCP backpressure): callers that need a deadline wrap it in a cancel scope,
sized to the message (the p2p layer derives them from measured bandwidth).
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import NoReturn, Self

import trio

from swarmlearn.errors import LocalProtocolError, RemoteProtocolError
from swarmlearn.p2p.framing import (
    FRAME_BYTES_MAX_DEFAULT,
    FrameReader,
    check_frame_bytes_max,
    encode_frame,
)
from swarmlearn.p2p.identity import CertificateInfo, Identity, PeerId
from swarmlearn.p2p.limits import ByteBudget, FrameRefused
from swarmlearn.p2p.tls import client_context, peer_certificate_info, server_context
from swarmlearn.p2p.wire import Message, decode_body

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TransportConfig:
    frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT
    handshake_timeout_s: float = 10.0
    #: How long a graceful close may wait to send TLS close_notify before it just closes.
    close_timeout_s: float = 5.0
    #: Most bytes asked of the TLS stream per read.
    receive_bytes_max: int = 1024 * 1024
    #: A frame's reads may take this long, plus a second per ``frame_rate_min_bytes_s``.
    frame_timeout_s: float = 10.0
    frame_rate_min_bytes_s: float = 1024 * 1024
    #: Silence allowed between frames (None: no limit; a member's link may idle).
    idle_timeout_s: float | None = None
    #: Frames are checked against their message type's limit from the header.
    typed_frames: bool = True
    #: A listener's connections (and TLS handshakes in progress) at once; more are closed.
    connections_max: int = 256
    handshakes_max: int = 64

    def __post_init__(self) -> None:
        check_frame_bytes_max(self.frame_bytes_max)
        if not (self.handshake_timeout_s > 0 and self.close_timeout_s > 0):
            raise LocalProtocolError("handshake_timeout_s and close_timeout_s must be > 0")
        if not (self.frame_timeout_s > 0 and self.frame_rate_min_bytes_s > 0):
            raise LocalProtocolError("frame_timeout_s and frame_rate_min_bytes_s must be > 0")
        if self.idle_timeout_s is not None and not self.idle_timeout_s > 0:
            raise LocalProtocolError("idle_timeout_s must be > 0 (or None: no limit)")
        if self.connections_max < 1 or self.handshakes_max < 1:
            raise LocalProtocolError("connections_max and handshakes_max must be >= 1")
        if self.receive_bytes_max < 1:
            raise LocalProtocolError("receive_bytes_max must be >= 1")


@dataclass
class TransportCounters:
    """Counters shared by a listener and the connections it serves (or one dialed connection)."""

    connections_accepted: int = 0
    handshakes_failed: int = 0
    protocol_errors: int = 0
    messages_dropped: int = 0
    frames_sent: int = 0
    frames_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    connections_open: int = 0
    frames_refused: int = 0  # over their type's limit, or over the budget of bytes in flight
    frame_timeouts: int = 0
    idle_timeouts: int = 0
    connections_refused: int = 0
    handshakes_open: int = 0
    last_error: str = field(default="")

    def snapshot(self) -> TransportStatistics:
        return TransportStatistics(**self.__dict__)


@dataclass(frozen=True)
class TransportStatistics:
    connections_accepted: int
    handshakes_failed: int
    protocol_errors: int
    messages_dropped: int
    frames_sent: int
    frames_received: int
    bytes_sent: int
    bytes_received: int
    connections_open: int
    frames_refused: int
    frame_timeouts: int
    idle_timeouts: int
    connections_refused: int
    handshakes_open: int
    last_error: str


class Connection:
    """An authenticated, framed message stream to one peer."""

    def __init__(
        self,
        stream: trio.SSLStream[trio.abc.Stream],
        peer: CertificateInfo,
        config: TransportConfig,
        counters: TransportCounters | None = None,
        budget: ByteBudget | None = None,
    ) -> None:
        self.peer = peer
        self._stream = stream
        self._config = config
        self._reader = FrameReader(config.frame_bytes_max, typed=config.typed_frames, budget=budget)
        self._frame_spent_s = 0.0  # time spent waiting on the peer for the current frame
        self._counters = counters if counters is not None else TransportCounters()
        self._send_lock = trio.Lock()
        self._closed = False
        self._counters.connections_open += 1

    @property
    def peer_id(self) -> PeerId:
        return self.peer.peer_id

    async def send(self, msg: Message) -> None:
        """Send one message; ``LocalProtocolError`` if it cannot be encoded or is over the limit."""
        buffers = encode_frame(msg, self._config.frame_bytes_max)
        async with self._send_lock:
            for buffer in buffers:
                await self._stream.send_all(buffer)
        self._counters.frames_sent += 1
        self._counters.bytes_sent += sum(len(buffer) for buffer in buffers)

    async def send_many(self, msgs: Sequence[Message]) -> None:
        """Send several messages in one write: fewer TLS records and system calls."""
        buffers = [part for msg in msgs for part in encode_frame(msg, self._config.frame_bytes_max)]
        data = b"".join(buffers)
        async with self._send_lock:
            await self._stream.send_all(data)
        self._counters.frames_sent += len(msgs)
        self._counters.bytes_sent += len(data)

    async def receive(self) -> Message:
        """The next valid message from the peer (see the module doc for what ends it)."""
        while True:
            body = self._reader.next_frame()
            if body is not None:
                self._counters.frames_received += 1
                try:
                    return decode_body(body)
                except RemoteProtocolError as error:
                    self._counters.messages_dropped += 1
                    await self._fail(RemoteProtocolError(f"undecodable message: {error}"))
            data = await self._receive_some()
            self._counters.bytes_received += len(data)
            if not data:
                if self._reader.at_boundary:
                    raise trio.EndOfChannel
                await self._fail(RemoteProtocolError("connection closed in the middle of a frame"))
            try:
                self._reader.feed(data)
            except RemoteProtocolError as error:
                self._counters.frames_refused += isinstance(error, FrameRefused)
                await self._fail(error)
            if self._reader.at_boundary:
                self._frame_spent_s = 0.0

    async def _receive_some(self) -> bytes | bytearray:
        """One read, under the deadline of the frame in progress (or the idle one)."""
        config = self._config
        if self._reader.at_boundary:
            if config.idle_timeout_s is None:
                return await self._stream.receive_some(config.receive_bytes_max)
            with trio.move_on_after(config.idle_timeout_s):
                return await self._stream.receive_some(config.receive_bytes_max)
            self._counters.idle_timeouts += 1
            await self._fail(RemoteProtocolError(f"idle for {config.idle_timeout_s:g} s"))
        allowed_s = config.frame_timeout_s + (
            self._reader.pending_body_bytes / config.frame_rate_min_bytes_s
        )
        started = trio.current_time()
        with trio.move_on_after(max(0.0, allowed_s - self._frame_spent_s)):
            try:
                return await self._stream.receive_some(config.receive_bytes_max)
            finally:
                self._frame_spent_s += trio.current_time() - started
        self._counters.frame_timeouts += 1
        await self._fail(RemoteProtocolError(f"a frame took over {allowed_s:.0f} s to arrive"))

    async def _fail(self, error: RemoteProtocolError) -> NoReturn:
        self._counters.protocol_errors += 1
        self._counters.last_error = str(error)
        log.info("closing connection to %s: %s", self.peer_id.short, error)
        await self._close(forcefully=True)
        raise error

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self._close(forcefully=False)

    async def _close(self, *, forcefully: bool) -> None:
        if self._closed:
            return
        self._closed = True
        self._counters.connections_open -= 1
        self._reader.close()
        if forcefully:
            await trio.aclose_forcefully(self._stream)
        else:
            # trio closes the stream even when the deadline cancels the close_notify.
            with trio.move_on_after(self._config.close_timeout_s):
                with contextlib.suppress(trio.BrokenResourceError):
                    await self._stream.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def statistics(self) -> TransportStatistics:
        return self._counters.snapshot()

    def count_idle(self) -> None:
        """A handler closed a connection that sat idle past its deadline."""
        self._counters.idle_timeouts += 1

    def count_refused(self) -> None:
        """A handler refused the connection (its peer holds too many)."""
        self._counters.connections_refused += 1


async def _secure(
    transport: trio.abc.Stream,
    context: ssl.SSLContext,
    *,
    server_side: bool,
    config: TransportConfig | None,
    counters: TransportCounters | None,
    expected_peer: PeerId | None = None,
    budget: ByteBudget | None = None,
) -> Connection:
    """Run the TLS handshake under its deadline; any failure closes the stream and is counted."""
    config = config or TransportConfig()
    counters = counters if counters is not None else TransportCounters()
    stream = trio.SSLStream(transport, context, server_side=server_side)
    try:
        with trio.fail_after(config.handshake_timeout_s):
            await stream.do_handshake()
        peer = peer_certificate_info(stream.getpeercert(binary_form=True))
        if expected_peer is not None and peer.peer_id != expected_peer:
            raise RemoteProtocolError(
                f"expected peer {expected_peer}, the certificate says {peer.peer_id}"
            )
    except (trio.BrokenResourceError, trio.TooSlowError, RemoteProtocolError) as error:
        counters.handshakes_failed += 1
        counters.last_error = _handshake_failure(error)
        await trio.aclose_forcefully(stream)
        raise RemoteProtocolError(counters.last_error) from error
    return Connection(stream, peer, config, counters, budget)


def _handshake_failure(error: BaseException) -> str:
    if isinstance(error, trio.TooSlowError):
        return "TLS handshake timed out"
    if isinstance(error, RemoteProtocolError):
        return str(error)
    cause = error.__cause__
    if isinstance(cause, ssl.SSLError):
        return f"TLS handshake failed: {cause.reason or cause}"
    return f"TLS handshake failed: {error or type(error).__name__}"


async def connect_stream(
    identity: Identity,
    transport: trio.abc.Stream,
    *,
    config: TransportConfig | None = None,
    expected_peer: PeerId | None = None,
    context: ssl.SSLContext | None = None,
    counters: TransportCounters | None = None,
    budget: ByteBudget | None = None,
) -> Connection:
    """Client side of a handshake over ``transport``; checks ``expected_peer`` when given."""
    context = context or client_context(identity)
    return await _secure(
        transport,
        context,
        server_side=False,
        config=config,
        counters=counters,
        expected_peer=expected_peer,
        budget=budget,
    )


async def accept_stream(
    identity: Identity,
    transport: trio.abc.Stream,
    *,
    config: TransportConfig | None = None,
    context: ssl.SSLContext | None = None,
    counters: TransportCounters | None = None,
    budget: ByteBudget | None = None,
) -> Connection:
    """Server side of a handshake over ``transport``."""
    context = context or server_context(identity)
    return await _secure(
        transport, context, server_side=True, config=config, counters=counters, budget=budget
    )


async def dial(
    identity: Identity,
    host: str,
    port: int,
    *,
    config: TransportConfig | None = None,
    expected_peer: PeerId | None = None,
    context: ssl.SSLContext | None = None,
    counters: TransportCounters | None = None,
    budget: ByteBudget | None = None,
) -> Connection:
    """TCP to ``host:port``, then the client handshake; each within ``handshake_timeout_s``."""
    config = config or TransportConfig()
    with trio.fail_after(config.handshake_timeout_s):
        tcp = await trio.open_tcp_stream(host, port)
    return await connect_stream(
        identity,
        tcp,
        config=config,
        expected_peer=expected_peer,
        context=context,
        counters=counters,
        budget=budget,
    )


Handler = Callable[[Connection], Awaitable[None]]


class Listener:
    """Accepts mutual-TLS connections and runs ``handler`` on each, one task per connection.

    A failed handshake or a misbehaving peer ends only that connection: it is counted
    (:meth:`statistics`) and the listener keeps serving. Its connections share one
    :class:`~swarmlearn.p2p.limits.ByteBudget` (``budget``; a new one when not given).
    """

    def __init__(
        self,
        identity: Identity,
        config: TransportConfig | None = None,
        budget: ByteBudget | None = None,
    ) -> None:
        self.identity = identity
        self.config = config or TransportConfig()
        self.budget = budget if budget is not None else ByteBudget()
        self._context = server_context(identity)
        self._counters = TransportCounters()
        self._connection_ended = trio.Event()

    async def serve(
        self,
        handler: Handler,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` (0: any free port); ``task_status.started`` gets the address."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        sockname = listeners[0].socket.getsockname()
        address = (str(sockname[0]), int(sockname[1]))

        async def serve_tcp(tcp: trio.SocketStream) -> None:
            await self.serve_stream(tcp, handler)

        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, serve_tcp, listeners)
            task_status.started(address)

    async def serve_stream(self, transport: trio.abc.Stream, handler: Handler) -> None:
        """Handshake on one accepted stream, then run ``handler``; peer faults end here."""
        counters, config = self._counters, self.config
        if (
            counters.connections_open + counters.handshakes_open >= config.connections_max
            or counters.handshakes_open >= config.handshakes_max
        ):
            counters.connections_refused += 1
            counters.last_error = "too many connections or handshakes at once"
            log.info(
                "refused a connection: %d open, %d handshakes (caps %d, %d)",
                counters.connections_open,
                counters.handshakes_open,
                config.connections_max,
                config.handshakes_max,
            )
            await trio.aclose_forcefully(transport)
            return
        self._counters.connections_accepted += 1
        try:
            await self._serve_stream(transport, handler)
        finally:
            self._connection_ended.set()
            self._connection_ended = trio.Event()

    async def _serve_stream(self, transport: trio.abc.Stream, handler: Handler) -> None:
        self._counters.handshakes_open += 1
        try:
            connection = await accept_stream(
                self.identity,
                transport,
                config=self.config,
                context=self._context,
                counters=self._counters,
                budget=self.budget,
            )
        except RemoteProtocolError as error:
            log.info("refused a connection: %s", error)
            return
        finally:
            self._counters.handshakes_open -= 1
        async with connection:
            try:
                await handler(connection)
            except (RemoteProtocolError, trio.BrokenResourceError) as error:
                log.info("connection to %s ended: %s", connection.peer_id.short, error)

    async def wait_statistics(
        self, condition: Callable[[TransportStatistics], bool]
    ) -> TransportStatistics:
        """Wait until ``condition`` holds of the statistics (checked as each connection ends)."""
        while not condition(snapshot := self.statistics()):
            await self._connection_ended.wait()
        return snapshot

    def statistics(self) -> TransportStatistics:
        return self._counters.snapshot()

    def count_idle(self) -> None:
        """A handler closed a connection that sat idle past its deadline."""
        self._counters.idle_timeouts += 1

    def count_refused(self) -> None:
        """A handler refused the connection (its peer holds too many)."""
        self._counters.connections_refused += 1
