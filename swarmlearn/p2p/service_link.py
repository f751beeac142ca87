"""One message connection of the p2p service: a mutual-TLS connection carrying a mux.

Theory of operation
-------------------
A :class:`Link` is one authenticated :class:`~swarmlearn.p2p.transport.Connection` to a peer
whose frames are those of a :class:`~swarmlearn.p2p.mux.Mux`. Each side sends on two streams
of its own: priority 0 (the peer table, gossip control and the urgent topics, such as
consensus) and priority 1 (other gossip). A stream carries length-prefixed message frames
(:mod:`swarmlearn.p2p.framing`); the receiving side keeps one frame reader per stream.

Two tasks run a link, in its own nursery (:meth:`run`); when either ends, both do:

- the **reader** feeds every received frame to the mux, each whole message to ``deliver``
  and each ``Writable`` (credit came back) to the writer;
- the **writer** moves queued bytes into the mux as far as its streams take them, and sends
  the frames the mux schedules (control first, then by priority, round-robin), at most
  ``write_budget_bytes`` of data per turn so that newly queued urgent bytes go next.

**Backpressure.** :meth:`queue` holds at most ``queue_bytes_max`` bytes not yet taken by the
mux; beyond that a message is refused (the caller counts it as dropped, as gossip expects of
a full per-peer queue). The mux holds one send buffer per stream and the peer grants credit
as it reads, so a slow peer stalls only its own link.

:meth:`close` (the peer table asked) sends what is queued, then ends the link.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import trio

from swarmlearn.errors import LocalProtocolError, RemoteProtocolError
from swarmlearn.p2p.framing import FrameReader, encode_frame
from swarmlearn.p2p.mux import (
    GoneAway,
    Mux,
    MuxConfig,
    MuxEvent,
    StreamData,
    StreamEnded,
    StreamReset,
)
from swarmlearn.p2p.transport import Connection
from swarmlearn.p2p.wire import Buffer, Message, decode_body

log = logging.getLogger(__name__)

PRIORITIES = (0, 1)
#: One writer turn (at most ``write_budget_bytes``) must be taken by the peer within
#: ``SEND_TIMEOUT_S`` plus a second per ``SEND_RATE_MIN_BYTES_S``: a peer that reads nothing
#: loses its link (what was queued for it is dropped, as a lossy link would).
SEND_TIMEOUT_S = 30.0
SEND_RATE_MIN_BYTES_S = 1024 * 1024
LINK_ERRORS = (
    trio.TooSlowError,
    RemoteProtocolError,
    LocalProtocolError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.EndOfChannel,
)


@dataclass
class LinkCounters:
    messages_sent: int = 0
    messages_received: int = 0
    messages_invalid: int = 0
    frames_sent: int = 0


class Link:
    """A message connection to one peer (see the module docstring)."""

    def __init__(
        self,
        conn: int,
        peer: str,
        connection: Connection,
        *,
        outbound: bool,
        mux_config: MuxConfig,
        queue_bytes_max: int,
        write_budget_bytes: int,
        frame_bytes_max: int,
    ) -> None:
        self.conn = conn
        self.peer = peer
        self.connection = connection
        self.outbound = outbound
        self.mux = Mux(client=outbound, config=mux_config)  # the dialer's streams are odd
        self.streams = {priority: self.mux.open_stream(priority) for priority in PRIORITIES}
        self.pending: dict[int, deque[memoryview]] = {p: deque() for p in PRIORITIES}
        self.pending_bytes = 0
        self.queue_bytes_max = queue_bytes_max
        self.write_budget_bytes = write_budget_bytes
        self.frame_bytes_max = frame_bytes_max
        self.readers: dict[int, FrameReader] = {}
        self.counters = LinkCounters()
        self.closing = False
        self.ended = ""
        self._wake = trio.Event()
        self._cancel: trio.CancelScope | None = None

    # ------------------------------------------------------------ the service's side

    def queue(self, message: Message, priority: int) -> bool:
        """Queue ``message`` on the stream of ``priority``; False if the queue is full."""
        if self.closing:
            return False
        parts = _encoded(message, self.frame_bytes_max)
        size = sum(len(part) for part in parts)
        if self.pending_bytes + size > self.queue_bytes_max:
            return False
        self.pending[priority].extend(memoryview(part).cast("B") for part in parts)
        self.pending_bytes += size
        self.counters.messages_sent += 1
        self._wake.set()
        return True

    def close(self) -> None:
        """Send what is queued, then end the link."""
        self.closing = True
        self._wake.set()

    def abort(self) -> None:
        if self._cancel is not None:
            self._cancel.cancel()

    async def run(self, deliver: Callable[[Message], None]) -> None:
        """Run the reader and the writer until either ends; the connection is then closed."""
        try:
            async with trio.open_nursery() as nursery:
                self._cancel = nursery.cancel_scope
                nursery.start_soon(self._guarded, self._read(deliver), nursery.cancel_scope)
                nursery.start_soon(self._guarded, self._write(), nursery.cancel_scope)
        finally:
            self.closing = True
            with trio.CancelScope(shield=True):
                await self.connection.aclose()

    async def _guarded(self, loop: Coroutine[Any, Any, None], scope: trio.CancelScope) -> None:
        """Run one of the two loops; when it ends, however, the other one is cancelled."""
        try:
            await loop
        except LINK_ERRORS as error:
            self.ended = self.ended or f"{type(error).__name__}: {error}"
        scope.cancel()

    # ------------------------------------------------------------ reading

    async def _read(self, deliver: Callable[[Message], None]) -> None:
        while True:
            frame = await self.connection.receive()
            events = self.mux.receive(frame)
            for event in events:
                self._on_event(event, deliver)
            if self.mux.control_pending or any(not isinstance(e, StreamData) for e in events):
                self._wake.set()  # credit to grant, credit granted, a stream opened or ended

    def _on_event(self, event: MuxEvent, deliver: Callable[[Message], None]) -> None:
        match event:
            case StreamData(stream, data):
                reader = self.readers.get(stream)
                if reader is None:
                    reader = self.readers[stream] = FrameReader(self.frame_bytes_max, typed=True)
                reader.feed(data)
                self.mux.consumed(stream, len(data))
                while (body := reader.next_frame()) is not None:
                    try:
                        message = decode_body(body)
                    except RemoteProtocolError:
                        self.counters.messages_invalid += 1
                        raise  # the link closes: a malformed message ends it (issue 19)
                    self.counters.messages_received += 1
                    if not self.closing:
                        deliver(message)
            case StreamEnded(stream) | StreamReset(stream):
                self.readers.pop(stream, None)
            case GoneAway(code):
                self.ended = self.ended or f"peer went away ({code})"
                self.close()
            case _:
                pass

    # ------------------------------------------------------------ writing

    async def _write(self) -> None:
        while True:
            self._fill_mux()
            frames = self.mux.next_frames(self.write_budget_bytes)
            if frames:
                with trio.fail_after(
                    SEND_TIMEOUT_S + self.write_budget_bytes / SEND_RATE_MIN_BYTES_S
                ):
                    await self.connection.send_many(frames)
                self.counters.frames_sent += len(frames)
                continue
            if self.closing and not self.pending_bytes:
                self.ended = self.ended or "closed"
                return
            await self._wake.wait()
            self._wake = trio.Event()

    def _fill_mux(self) -> None:
        for priority, parts in self.pending.items():
            stream = self.streams[priority]
            while parts:
                taken = self.mux.write(stream, parts[0])
                self.pending_bytes -= taken
                if taken < len(parts[0]):
                    parts[0] = parts[0][taken:]
                    break
                parts.popleft()


#: The last message encoded, with its frame: gossip hands one message object to several links
#: in a row (a forward to the mesh, a flood to every topic peer), so it is encoded once. The
#: message is held (not its id), so the identity test cannot match a new object at its address;
#: only one without a payload (a chunk's view would keep a model alive).
_last_encoded: list[tuple[Message, int, list[Buffer]]] = []


def _encoded(message: Message, frame_bytes_max: int) -> list[Buffer]:
    if _last_encoded:
        last, limit, parts = _last_encoded[0]
        if last is message and limit == frame_bytes_max:
            return parts
    parts = encode_frame(message, frame_bytes_max)
    _last_encoded[:] = [(message, frame_bytes_max, parts)] if len(parts) == 1 else []
    return parts
