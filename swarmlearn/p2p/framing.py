"""Length-prefixed framing (sans-IO): bytes in any split, whole frame bodies out.

Theory of operation
-------------------
A frame is ``u32 body_len | body`` (big-endian); the body is what
:mod:`swarmlearn.p2p.wire` encodes. :class:`FrameReader` takes received bytes
with :meth:`~FrameReader.feed`, split anywhere, and hands out whole bodies with
:meth:`~FrameReader.next_frame`.

Bytes are copied at most once. A frame's own buffer grows with the bytes that
actually arrive (never with the length announced: a peer that announces 64 MiB
and sends nothing holds nothing); the body is handed out as a ``memoryview`` of
that buffer, so a decoded payload (a 4 MiB weight chunk) is a view, not another
copy. A frame that arrives whole inside one immutable ``bytes`` object is not
copied at all.

A length over ``frame_bytes_max`` (or under the 4-byte minimum body) is a
:class:`RemoteProtocolError` before anything is allocated, and the reader stays
broken: the stream cannot be resynchronized, so the connection must close.
With ``typed`` (peer connections), the message tag is read from the first bytes
of the body and a length over what that type may be
(:func:`~swarmlearn.p2p.limits.frame_bytes_max_for`) is refused the same way;
with a ``budget``, bytes held beyond its reserve come from the node's total, and
a frame that would go over it is refused too (see :mod:`swarmlearn.p2p.limits`).
Call :meth:`FrameReader.close` when the stream ends, to give back what it held.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from typing import Final

from swarmlearn.errors import LocalProtocolError, RemoteProtocolError
from swarmlearn.p2p.limits import ByteBudget, FrameRefused, frame_bytes_max_for
from swarmlearn.p2p.wire import (
    HEADER_LEN,
    TAG_PEEK_BYTES,
    Buffer,
    Message,
    decode_body,
    encode_body,
    peek_tag,
)

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

    def __init__(
        self,
        frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT,
        *,
        typed: bool = False,
        budget: ByteBudget | None = None,
    ) -> None:
        self.frame_bytes_max = check_frame_bytes_max(frame_bytes_max)
        self.typed = typed
        self.budget = budget
        self._prefix = bytearray()
        self._frame: bytearray | None = None
        self._body_len = 0
        self._typed_ok = False
        self._taken = 0  # bytes of the partial frame taken from the budget
        self._ready: deque[memoryview] = deque()
        self._error: RemoteProtocolError | None = None
        self._frames = 0
        self._bytes_fed = 0

    def feed(self, data: Buffer) -> None:
        """Take received bytes; raises :class:`RemoteProtocolError` on a bad length prefix,
        a frame over its type's limit, or one the budget cannot hold."""
        if self._error is not None:
            raise self._error
        view = memoryview(data).cast("B")
        self._bytes_fed += len(view)
        zero_copy = type(data) is bytes
        try:
            while view:
                view = (
                    self._take_prefix(view, zero_copy) if self._frame is None else self._fill(view)
                )
        except RemoteProtocolError as error:
            self._error = error
            self.close()
            raise

    def _take_prefix(self, view: memoryview, zero_copy: bool) -> memoryview:
        need = FRAME_LEN.size - len(self._prefix)
        self._prefix += view[:need]
        view = view[need:]
        if len(self._prefix) < FRAME_LEN.size:
            return view
        (body_len,) = FRAME_LEN.unpack(self._prefix)
        self._prefix.clear()
        if body_len > self.frame_bytes_max or body_len < HEADER_LEN.size:
            raise FrameRefused(f"frame length {body_len} outside 4..{self.frame_bytes_max} bytes")
        if zero_copy and len(view) >= body_len:
            self._check_type(view[:body_len], body_len)
            self._deliver(view[:body_len])
            return view[body_len:]
        self._frame = bytearray()
        self._body_len = body_len
        self._typed_ok = not self.typed
        return view

    def _fill(self, view: memoryview) -> memoryview:
        assert self._frame is not None
        count = min(len(view), self._body_len - len(self._frame))
        self._hold(len(self._frame) + count)
        self._frame += view[:count]
        if not self._typed_ok:
            self._typed_ok = self._check_type(self._frame, self._body_len)
        if len(self._frame) == self._body_len:
            self._deliver(memoryview(self._frame))
            self._frame = None
            self._give_back()
        return view[count:]

    def _check_type(self, start: Buffer, body_len: int) -> bool:
        """False while the tag has not arrived; raises when ``body_len`` is over its limit."""
        if not self.typed:
            return True
        try:
            tag = peek_tag(memoryview(start)[:TAG_PEEK_BYTES], body_len)
        except FrameRefused:
            raise
        except RemoteProtocolError as error:  # not a message header: refused from it
            raise FrameRefused(str(error)) from None
        if tag is None:
            return False
        limit = frame_bytes_max_for(tag, self.frame_bytes_max)
        if body_len > limit:
            raise FrameRefused(
                f"frame of {body_len} bytes over the {limit}-byte limit of message tag {tag:#x}"
            )
        return True

    def _hold(self, size: int) -> None:
        """The partial frame is to hold ``size`` bytes: take what is over the reserve."""
        if self.budget is None:
            return
        need = max(0, size - self.budget.reserve_bytes) - self._taken
        if need > 0:
            if not self.budget.take(need):
                raise FrameRefused(
                    f"frame of {self._body_len} bytes refused: the node's "
                    f"{self.budget.total_bytes_max}-byte budget of bytes in flight is spent"
                )
            self._taken += need

    def _give_back(self) -> None:
        if self.budget is not None and self._taken:
            self.budget.give(self._taken)
        self._taken = 0

    def close(self) -> None:
        """The stream ended: drop a partial frame and give back what it held (idempotent)."""
        self._frame = None
        self._give_back()

    @property
    def pending_body_bytes(self) -> int:
        """The announced length of the frame being received (0 between frames)."""
        return self._body_len if self._frame is not None else 0

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
        partial = len(self._prefix) + (len(self._frame) if self._frame is not None else 0)
        return FrameReaderStatistics(self._frames, self._bytes_fed, partial)
