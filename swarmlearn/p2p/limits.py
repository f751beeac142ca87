"""What a peer can make a node hold: frame sizes by message type, and bytes in flight (sans-IO).

Theory of operation
-------------------
A frame announces its length in its first four bytes; a node must not take that at its
word. Three rules, applied by every reader of peer frames (the trio transport's
:class:`~swarmlearn.p2p.framing.FrameReader`, the round lanes' threads):

- **By type, from the header.** Once the first bytes of the body arrive, the message tag is
  known (:func:`~swarmlearn.p2p.wire.peek_tag`), and so the most that type may be
  (:func:`frame_bytes_max_for`): a message with no payload field (votes, proposals,
  requests) is at most :data:`HEADER_FRAME_BYTES_MAX`; one with a payload (weight chunks)
  up to the connection's ``frame_bytes_max``, or less where its class says
  (``FRAME_BYTES_MAX``). An unknown tag or a length over the type's limit closes the
  connection before its body is read.
- **Buffers grow with the bytes that arrive**, never with the length announced.
- **A budget of bytes in flight.** Each connection may hold :attr:`ByteBudget.reserve_bytes`
  of partial frames on its own (every consensus message fits); more comes from one total
  shared by the node's connections (:attr:`ByteBudget.total_bytes_max`). A frame that would
  go over it closes its connection (counted); what it held is given back.

Time is the drivers' business (the transport and the lanes cut a peer that stops mid-frame,
see ``frame_timeout_s``); nothing here reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from swarmlearn.errors import LocalProtocolError, RemoteProtocolError
from swarmlearn.p2p.wire import Message, has_payload, message_type_count, message_types

#: A message without a payload field: a proposal holds a block (at most 4 MiB of
#: transactions by default) and its signatures; nothing without bulk bytes is bigger.
HEADER_FRAME_BYTES_MAX: Final = 8 * 1024 * 1024
#: Partial frames each connection may hold on its own, whatever the others hold.
RESERVE_BYTES_DEFAULT: Final = 256 * 1024
#: Partial frames all of a node's connections hold together, beyond their reserves.
TOTAL_BYTES_MAX_DEFAULT: Final = 64 * 1024 * 1024


class FrameRefused(RemoteProtocolError):
    """A frame refused from its header (too long for its type) or for the budget."""


def frame_bytes_max_for(tag: int, frame_bytes_max: int) -> int:
    """The largest frame body a message of ``tag`` may have on a connection whose limit is
    ``frame_bytes_max``; :class:`RemoteProtocolError` for a tag no message has."""
    cls = _types().get(tag)
    if cls is None:
        raise FrameRefused(f"unknown message tag {tag:#x}")
    declared = getattr(cls, "FRAME_BYTES_MAX", None)
    if isinstance(declared, int):
        return min(declared, frame_bytes_max)
    return frame_bytes_max if has_payload(cls) else min(HEADER_FRAME_BYTES_MAX, frame_bytes_max)


_known: dict[int, type[Message]] = {}


def _types() -> dict[int, type[Message]]:
    if len(_known) != message_type_count():  # message modules may be imported later
        _known.clear()
        _known.update(message_types())
    return _known


@dataclass(frozen=True)
class BudgetStatistics:
    held_bytes: int  # partial frames held beyond the connections' reserves
    held_bytes_peak: int
    total_bytes_max: int
    refused: int  # frames refused because the total was spent


class ByteBudget:
    """Bytes of partial frames the node's connections hold beyond their reserves."""

    def __init__(
        self,
        total_bytes_max: int = TOTAL_BYTES_MAX_DEFAULT,
        reserve_bytes: int = RESERVE_BYTES_DEFAULT,
    ) -> None:
        if total_bytes_max < 0 or reserve_bytes < 0:
            raise LocalProtocolError("total_bytes_max and reserve_bytes must be >= 0")
        self.total_bytes_max = total_bytes_max
        self.reserve_bytes = reserve_bytes
        self.held_bytes = 0
        self.held_bytes_peak = 0
        self.refused = 0

    def take(self, size: int) -> bool:
        """Take ``size`` bytes; False (counted) when they do not fit."""
        if self.held_bytes + size > self.total_bytes_max:
            self.refused += 1
            return False
        self.held_bytes += size
        self.held_bytes_peak = max(self.held_bytes_peak, self.held_bytes)
        return True

    def give(self, size: int) -> None:
        assert 0 <= size <= self.held_bytes, (size, self.held_bytes)
        self.held_bytes -= size

    def statistics(self) -> BudgetStatistics:
        return BudgetStatistics(
            self.held_bytes, self.held_bytes_peak, self.total_bytes_max, self.refused
        )
