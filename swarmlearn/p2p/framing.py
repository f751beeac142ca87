"""Length-prefixed framing (sans-IO): bytes in any split, whole frame bodies out.

Theory of operation
-------------------
A frame is ``u32 body_len | body`` (big-endian); the body is what
:mod:`swarmlearn.p2p.wire` encodes. :class:`FrameReader` takes received bytes
with :meth:`~FrameReader.feed`, split anywhere, and hands out whole bodies with
:meth:`~FrameReader.next_frame`.

Bytes are copied at most once. As soon as a length prefix is known, the
reader allocates the frame's own buffer and copies arriving bytes straight
into it; the body is handed out as a ``memoryview`` of that buffer, so a
decoded payload (a 4 MiB weight chunk) is a view, not another copy. A frame
that arrives whole inside one immutable ``bytes`` object is not copied at all.

A length over ``frame_bytes_max`` (or under the 4-byte minimum body) is a
:class:`RemoteProtocolError` before anything is allocated, and the reader stays
broken: the stream cannot be resynchronized, so the connection must close.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from typing import Final

from swarmlearn.errors import LocalProtocolError, RemoteProtocolError
from swarmlearn.p2p.wire import HEADER_LEN, Buffer, Message, decode_body, encode_body

FRAME_LEN: Final = struct.Struct(">I")
FRAME_BYTES_MAX_DEFAULT: Final = 64 * 1024 * 1024
FRAME_BYTES_LIMIT: Final = 2**32 - 1


def check_frame_bytes_max(frame_bytes_max: int) -> int:
    if (
        type(frame_bytes_max) is not int
        or not HEADER_LEN.size < frame_bytes_max <= FRAME_BYTES_LIMIT
    ):
        raise LocalProtocolError(
            f"frame_bytes_max must be an int in {HEADER_LEN.size + 1}..{FRAME_BYTES_LIMIT}, "
            f"got {frame_bytes_max!r}"
        )
    return frame_bytes_max


def encode_frame(msg: Message, frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT) -> list[Buffer]:
    """The buffers of one frame, to be sent in order: prefix and header, then the payload.

    The payload is returned as is (a view) rather than joined, so a bulk chunk is never copied
    here. Raises :class:`LocalProtocolError` when the frame would exceed ``frame_bytes_max``.
    """
    head, payload = encode_body(msg)
    body_len = len(head) + len(payload)
    if body_len > frame_bytes_max:
        raise LocalProtocolError(
            f"{type(msg).__qualname__} frame of {body_len} bytes exceeds the "
            f"{frame_bytes_max}-byte frame limit"
        )
    prefixed = FRAME_LEN.pack(body_len) + head
    return [prefixed, payload] if payload else [prefixed]


@dataclass(frozen=True)
class FrameReaderStatistics:
    frames: int
    bytes_fed: int
    buffered_bytes: int


class FrameReader:
    """Reassembles frame bodies from a byte stream split anywhere."""

    def __init__(self, frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT) -> None:
        self.frame_bytes_max = check_frame_bytes_max(frame_bytes_max)
        self._prefix = bytearray()
        self._frame: bytearray | None = None
        self._filled = 0
        self._ready: deque[memoryview] = deque()
        self._error: RemoteProtocolError | None = None
        self._frames = 0
        self._bytes_fed = 0

    def feed(self, data: Buffer) -> None:
        """Take received bytes; raises :class:`RemoteProtocolError` on a bad length prefix."""
        if self._error is not None:
            raise self._error
        view = memoryview(data).cast("B")
        self._bytes_fed += len(view)
        zero_copy = type(data) is bytes
        while view:
            view = self._take_prefix(view, zero_copy) if self._frame is None else self._fill(view)

    def _take_prefix(self, view: memoryview, zero_copy: bool) -> memoryview:
        need = FRAME_LEN.size - len(self._prefix)
        self._prefix += view[:need]
        view = view[need:]
        if len(self._prefix) < FRAME_LEN.size:
            return view
        (body_len,) = FRAME_LEN.unpack(self._prefix)
        self._prefix.clear()
        if body_len > self.frame_bytes_max or body_len < HEADER_LEN.size:
            self._error = RemoteProtocolError(
                f"frame length {body_len} outside 4..{self.frame_bytes_max} bytes"
            )
            raise self._error
        if zero_copy and len(view) >= body_len:
            self._deliver(view[:body_len])
            return view[body_len:]
        self._frame = bytearray(body_len)
        self._filled = 0
        return view

    def _fill(self, view: memoryview) -> memoryview:
        assert self._frame is not None
        count = min(len(view), len(self._frame) - self._filled)
        self._frame[self._filled : self._filled + count] = view[:count]
        self._filled += count
        if self._filled == len(self._frame):
            self._deliver(memoryview(self._frame))
            self._frame = None
        return view[count:]

    def _deliver(self, body: memoryview) -> None:
        self._ready.append(body)
        self._frames += 1

    def next_frame(self) -> memoryview | None:
        """The next whole frame body, or None until more bytes arrive."""
        return self._ready.popleft() if self._ready else None

    def next_message(self) -> Message | None:
        """The next whole frame decoded (:class:`RemoteProtocolError` if it is invalid)."""
        body = self.next_frame()
        return None if body is None else decode_body(body)

    @property
    def at_boundary(self) -> bool:
        """True when no partial frame is buffered (a clean place for the stream to end)."""
        return self._frame is None and not self._prefix

    def statistics(self) -> FrameReaderStatistics:
        partial = len(self._prefix) + (self._filled if self._frame is not None else 0)
        return FrameReaderStatistics(self._frames, self._bytes_fed, partial)
