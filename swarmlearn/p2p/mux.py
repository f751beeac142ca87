"""Stream multiplexing over one connection (sans-IO, yamux-style flow control).

Theory of operation
-------------------
One connection per peer pair carries many logical *streams*. :class:`Mux` is one end's
state; the driver feeds it received frames (:meth:`Mux.receive`) and application actions
(:meth:`open_stream`, :meth:`write`, :meth:`consumed`, :meth:`close`, :meth:`reset`), and
sends what :meth:`next_frames` hands out whenever the connection can take more. Three frame
types (wire tags 0x28-0x2A) with yamux's flags (SYN opens, ACK accepts, FIN half-closes,
RST aborts a stream):

- :class:`MuxData`: up to ``frame_bytes_max`` bytes of one stream (a view, never copied);
- :class:`MuxWindow`: credit: "you may send ``delta`` more bytes on this stream";
- :class:`MuxGoAway`: no new streams on this connection.

**Flow control.** Each stream starts with ``window_bytes`` of credit each way. A sender never
has more bytes in flight on a stream than the receiver granted; the receiver grants more
(a ``MuxWindow``) once the application has consumed half a window. So each stream buffers at
most one window on the receiving side, and a slow reader stalls only its own stream. Data
beyond the granted window is a protocol violation that ends the connection.

**Scheduling.** :meth:`next_frames` sends control frames first (credit, resets, opens and
closes), then data: streams by priority (lower first), round-robin within a priority, one
frame per stream per turn. A small message written while a 1 GB transfer has its window
full waits for at most one frame per other active stream of its priority (and none at all
with a higher priority): a consensus vote is never stuck behind a model.

**Bounds.** At most ``streams_max`` open streams (a SYN beyond gets RST); per stream at most
``send_buffer_bytes_max`` bytes queued (:meth:`write` takes what fits and says how much; the
application waits for a :class:`Writable` event) and one window received but unconsumed.

Errors: our misuse (writing to a closed stream) is :class:`LocalProtocolError`; a peer's
violation is :class:`RemoteProtocolError`, after which the mux is broken (sticky): the
driver sends :attr:`Mux.go_away_frame` if it can and closes the connection.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from swarmlearn.errors import LocalProtocolError, RemoteProtocolError
from swarmlearn.p2p.wire import Message, Payload


class Flag(enum.IntFlag):
    SYN = 1
    ACK = 2
    FIN = 4
    RST = 8


@dataclass(frozen=True)
class MuxData(Message, tag=0x28):
    stream: int
    flags: int
    data: Payload


@dataclass(frozen=True)
class MuxWindow(Message, tag=0x29):
    stream: int
    flags: int
    delta: int


@dataclass(frozen=True)
class MuxGoAway(Message, tag=0x2A):
    code: int  # 0 normal, 1 protocol error, 2 internal error


# ---------------------------------------------------------------- events for the application


@dataclass(frozen=True)
class StreamOpened:
    stream: int


@dataclass(frozen=True)
class StreamData:
    stream: int
    data: memoryview  # call Mux.consumed(stream, len) once the application is done with it


@dataclass(frozen=True)
class StreamEnded:
    stream: int  # the peer will send no more (FIN)


@dataclass(frozen=True)
class StreamReset:
    stream: int


@dataclass(frozen=True)
class Writable:
    stream: int  # credit or buffer space came back: write more


@dataclass(frozen=True)
class GoneAway:
    code: int


MuxEvent = StreamOpened | StreamData | StreamEnded | StreamReset | Writable | GoneAway


@dataclass(frozen=True)
class MuxConfig:
    window_bytes: int = 256 * 1024
    frame_bytes_max: int = 64 * 1024
    send_buffer_bytes_max: int = 1024 * 1024
    streams_max: int = 256

    def __post_init__(self) -> None:
        if not 0 < self.frame_bytes_max <= self.window_bytes or self.streams_max < 1:
            raise ValueError("need 0 < frame_bytes_max <= window_bytes and streams_max >= 1")
        if self.send_buffer_bytes_max < 1:
            raise ValueError("send_buffer_bytes_max must be >= 1")


@dataclass
class _Stream:
    priority: int
    send_window: int
    recv_window: int
    queued: deque[memoryview] = field(default_factory=deque)
    queued_bytes: int = 0
    unacked_credit: int = 0  # consumed by the application, not yet granted back
    syn: bool = False  # our SYN still to send
    ack: bool = False  # our ACK still to send
    fin_queued: bool = False  # close() called: FIN after the queued bytes
    fin_sent: bool = False
    fin_received: bool = False
    blocked: bool = False  # the application got 0 from write(): tell it when to retry


@dataclass(frozen=True)
class MuxStatistics:
    streams: int
    queued_bytes: int
    frames_sent: int
    data_bytes_sent: int
    resets_sent: int


class Mux:
    """One end of a multiplexed connection (see the module docstring)."""

    def __init__(self, client: bool, config: MuxConfig | None = None) -> None:
        self.config = config or MuxConfig()
        self.client = client
        self._next_id = 1 if client else 2
        self._streams: dict[int, _Stream] = {}
        self._control: deque[Message] = deque()
        self._rotation: dict[int, deque[int]] = {}  # priority -> stream ids, round-robin
        self._peer_highest = 0
        self._error: RemoteProtocolError | None = None
        self._going_away = False
        self._peer_gone = False
        self._frames_sent = self._data_bytes_sent = self._resets_sent = 0

    # ------------------------------------------------------------ application side

    def open_stream(self, priority: int = 1) -> int:
        self._check_usable()
        if self._going_away or self._peer_gone:
            raise LocalProtocolError("the connection is going away: no new streams")
        if len(self._streams) >= self.config.streams_max:
            raise LocalProtocolError(f"{self.config.streams_max} streams are open already")
        stream_id = self._next_id
        self._next_id += 2
        window = self.config.window_bytes
        self._streams[stream_id] = _Stream(priority, window, window, syn=True)
        self._rotation.setdefault(priority, deque()).append(stream_id)
        return stream_id

    def write(self, stream_id: int, data: bytes | bytearray | memoryview) -> int:
        """Queue up to ``len(data)`` bytes (a reference, not a copy); how many were taken."""
        stream = self._writable(stream_id)
        view = memoryview(data).cast("B")
        room = self.config.send_buffer_bytes_max - stream.queued_bytes
        take = min(room, len(view))
        if take:
            stream.queued.append(view[:take])
            stream.queued_bytes += take
        stream.blocked = take < len(view)
        return take

    def close(self, stream_id: int) -> None:
        """Half-close: a FIN follows the bytes already queued."""
        self._writable(stream_id).fin_queued = True

    def reset(self, stream_id: int) -> None:
        """Abort the stream both ways; queued bytes are dropped."""
        if stream_id in self._streams:
            self._forget(stream_id)
            self._control.append(MuxWindow(stream_id, int(Flag.RST), 0))
            self._resets_sent += 1

    def consumed(self, stream_id: int, count: int) -> None:
        """The application is done with ``count`` received bytes: grant them back."""
        stream = self._streams.get(stream_id)
        if stream is None or count <= 0:
            return
        stream.unacked_credit += count
        if stream.unacked_credit >= self.config.window_bytes // 2 and not stream.fin_received:
            stream.recv_window += stream.unacked_credit
            self._control.append(MuxWindow(stream_id, 0, stream.unacked_credit))
            stream.unacked_credit = 0

    @property
    def control_pending(self) -> bool:
        """Whether control frames (credit granted, a reset, GOAWAY) wait to be sent."""
        return bool(self._control)

    def go_away(self, code: int = 0) -> None:
        self._going_away = True
        self._control.append(MuxGoAway(code))

    @property
    def go_away_frame(self) -> MuxGoAway:
        return MuxGoAway(1 if self._error is not None else 0)

    def statistics(self) -> MuxStatistics:
        queued = sum(s.queued_bytes for s in self._streams.values())
        return MuxStatistics(
            len(self._streams), queued, self._frames_sent, self._data_bytes_sent, self._resets_sent
        )

    def writable_streams(self) -> list[int]:
        """Streams whose last :meth:`write` fell short and that have room again (call after
        sending what :meth:`next_frames` gave): the application may write more."""
        ready = []
        for stream_id in sorted(self._streams):
            stream = self._streams[stream_id]
            if stream.blocked and stream.queued_bytes < self.config.send_buffer_bytes_max:
                stream.blocked = False
                ready.append(stream_id)
        return ready

    def send_window(self, stream_id: int) -> int:
        stream = self._streams.get(stream_id)
        return stream.send_window if stream is not None else 0

    # ------------------------------------------------------------ sending

    def next_frames(self, budget_bytes: int | None = None) -> list[Message]:
        """Frames to send now: control first, then data by priority, round-robin."""
        self._check_usable()
        frames: list[Message] = []
        spent = 0
        while self._control:
            frames.append(self._control.popleft())
        for stream_id in sorted(self._streams):  # opens and accepts (in id order), bare closes
            stream = self._streams[stream_id]
            if stream.syn or stream.ack:
                frames.append(MuxWindow(stream_id, int(self._open_flags(stream)), 0))
            if stream.fin_queued and not stream.fin_sent and not stream.queued:
                frames.append(MuxData(stream_id, int(self._open_flags(stream) | Flag.FIN), b""))
                stream.fin_sent = True
                self._maybe_forget(stream_id)
        for priority in sorted(self._rotation):
            rotation = self._rotation[priority]
            while budget_bytes is None or spent < budget_bytes:
                frame = self._next_data_frame(rotation)
                if frame is None:
                    break
                frames.append(frame)
                spent += len(frame.data)
            if budget_bytes is not None and spent >= budget_bytes:
                break
        self._frames_sent += len(frames)
        self._data_bytes_sent += spent
        return frames

    def _next_data_frame(self, rotation: deque[int]) -> MuxData | None:
        """One frame from the first stream in the rotation that can send; it goes last."""
        for _ in range(len(rotation)):
            stream_id = rotation[0]
            rotation.rotate(-1)
            stream = self._streams[stream_id]
            size = min(self.config.frame_bytes_max, stream.send_window, stream.queued_bytes)
            if size <= 0:
                continue
            data = self._take(stream, size)
            stream.send_window -= size
            flags = self._open_flags(stream)
            if stream.fin_queued and not stream.queued:
                flags |= Flag.FIN
                stream.fin_sent = True
            frame = MuxData(stream_id, int(flags), data)
            self._maybe_forget(stream_id)
            return frame
        return None

    def _take(self, stream: _Stream, size: int) -> memoryview | bytes:
        head = stream.queued[0]
        stream.queued_bytes -= size
        if len(head) >= size:  # the common case: a slice of one written buffer, no copy
            if len(head) == size:
                stream.queued.popleft()
            else:
                stream.queued[0] = head[size:]
            return head[:size]
        parts = []
        while size:
            head = stream.queued.popleft()
            part, rest = head[:size], head[size:]
            parts.append(part)
            size -= len(part)
            if rest:
                stream.queued.appendleft(rest)
        return b"".join(parts)

    def _open_flags(self, stream: _Stream) -> Flag:
        flags = Flag(0)
        if stream.syn:
            flags |= Flag.SYN
            stream.syn = False
        if stream.ack:
            flags |= Flag.ACK
            stream.ack = False
        return flags

    # ------------------------------------------------------------ receiving

    def receive(self, frame: Message) -> list[MuxEvent]:
        """Take one received frame; events for the application (a violation raises)."""
        self._check_usable()
        try:
            match frame:
                case MuxData(stream_id, flags, data):
                    return self._on_frame(stream_id, Flag(flags & 0xF), len(data), data)
                case MuxWindow(stream_id, flags, delta):
                    return self._on_frame(stream_id, Flag(flags & 0xF), delta, None)
                case MuxGoAway(code):
                    self._peer_gone = True
                    return [GoneAway(code)]
                case _:
                    raise RemoteProtocolError(f"not a mux frame: {type(frame).__name__}")
        except RemoteProtocolError as error:
            self._error = error
            raise

    def _on_frame(
        self, stream_id: int, flags: Flag, size: int, data: bytes | bytearray | memoryview | None
    ) -> list[MuxEvent]:
        events: list[MuxEvent] = []
        stream = self._streams.get(stream_id)
        if stream is None:
            if not flags & Flag.SYN:
                return []  # for a stream already gone (reset or finished): dropped
            opened = self._accept(stream_id)
            if opened is None:
                return []
            stream = opened
            events.append(StreamOpened(stream_id))
        if flags & Flag.RST:
            self._forget(stream_id)
            return [*events, StreamReset(stream_id)]
        if data is not None:
            if size > stream.recv_window:
                raise RemoteProtocolError(
                    f"stream {stream_id}: {size} bytes exceed the {stream.recv_window}-byte window"
                )
            if stream.fin_received and size:
                raise RemoteProtocolError(f"stream {stream_id}: data after FIN")
            stream.recv_window -= size
            if size:
                events.append(StreamData(stream_id, memoryview(data)))
        elif size:
            stream.send_window += size
            if stream.blocked or stream.queued_bytes:
                stream.blocked = False
                events.append(Writable(stream_id))
        if flags & Flag.FIN and not stream.fin_received:
            stream.fin_received = True
            events.append(StreamEnded(stream_id))
            self._maybe_forget(stream_id)
        return events

    def _accept(self, stream_id: int) -> _Stream | None:
        ours = stream_id % 2 == (1 if self.client else 0)
        if ours or stream_id <= self._peer_highest or stream_id == 0:
            raise RemoteProtocolError(f"SYN for stream {stream_id}, which is not a new one of its")
        self._peer_highest = stream_id
        if len(self._streams) >= self.config.streams_max or self._going_away:
            self._control.append(MuxWindow(stream_id, int(Flag.RST), 0))
            self._resets_sent += 1
            return None
        window = self.config.window_bytes
        stream = _Stream(1, window, window, ack=True)
        self._streams[stream_id] = stream
        self._rotation.setdefault(1, deque()).append(stream_id)
        return stream

    # ------------------------------------------------------------ bookkeeping

    def _writable(self, stream_id: int) -> _Stream:
        self._check_usable()
        stream = self._streams.get(stream_id)
        if stream is None or stream.fin_queued:
            raise LocalProtocolError(f"stream {stream_id} is not open for writing")
        return stream

    def _maybe_forget(self, stream_id: int) -> None:
        stream = self._streams[stream_id]
        if stream.fin_sent and stream.fin_received and not stream.queued:
            self._forget(stream_id)

    def _forget(self, stream_id: int) -> None:
        stream = self._streams.pop(stream_id)
        rotation = self._rotation[stream.priority]
        rotation.remove(stream_id)
        if not rotation:
            del self._rotation[stream.priority]

    def _check_usable(self) -> None:
        if self._error is not None:
            raise RemoteProtocolError(f"the connection is broken: {self._error}")
