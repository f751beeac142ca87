"""Messages of the transport layer (tags 0x01-0x0F) and the bulk chunk (0x10)."""

from __future__ import annotations

from dataclasses import dataclass

from swarmlearn.p2p.wire import Message, Payload


@dataclass(frozen=True)
class Ping(Message, tag=0x01):
    """Liveness probe; the peer answers :class:`Pong` with the same nonce."""

    nonce: int


@dataclass(frozen=True)
class Pong(Message, tag=0x02):
    nonce: int


@dataclass(frozen=True)
class Goodbye(Message, tag=0x03):
    """Sent before a deliberate close, so the peer can tell it from a crash."""

    reason: str


@dataclass(frozen=True)
class Chunk(Message, tag=0x10):
    """One chunk of a blob (a model's weights): ``data`` travels raw, after the header."""

    blob: bytes  # the root hash of the blob's manifest
    index: int
    data: Payload
