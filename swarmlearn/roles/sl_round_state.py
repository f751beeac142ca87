"""What the SL round core (:mod:`swarmlearn.roles.sl_round`) remembers of a round.

:class:`RoundState` is one contribution's round on one contract (its check-in, the current
attempt, the merged model once assembled); :class:`Attempt` is one try at the exchange with a
fixed participant list. :class:`EarlyMessages` holds the round messages of an attempt this
node has not yet seen the ledger start (blocks commit at slightly different times on
different nodes), bounded in bytes, and hands them back when the attempt starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from swarmlearn.merge import RangeMerge
from swarmlearn.roles.sl_messages import Contribute, MergedPiece, RoundChunk, RoundManifest

EARLY_BYTES_MAX = 512 * 1024 * 1024

RoundMessage = RoundManifest | RoundChunk | MergedPiece


@dataclass
class Attempt:
    number: int
    participants: tuple[str, ...]
    me: int
    merge: RangeMerge | None
    manifests: dict[int, tuple[bytes, ...]] = field(default_factory=dict)
    # chunks that came before their sender's manifest: participant, chunk, data, digest
    waiting: list[tuple[int, int, Any, bytes | None]] = field(default_factory=list)
    merged: bytearray | memoryview = field(default_factory=bytearray)
    pieces: set[int] = field(default_factory=set)  # owners whose whole range arrived
    bytes_from: dict[int, int] = field(default_factory=dict)  # merged bytes per owner
    reported: bool = False
    digests: dict[int, bytes] = field(default_factory=dict)  # merged chunks hashed by a lane
    merge_in_place: bool = False  # my range is merged straight into ``merged``
    in_file: bool = False  # ``merged`` is the trainer's handover file (the contribution)


@dataclass
class RoundState:
    contract: str
    number: int
    contribution: Contribute
    manifest_hashes: tuple[bytes, ...]
    root: bytes
    attempt: Attempt | None = None
    merged_root: bytes | None = None
    merged: bytearray | memoryview | None = None
    finished: bool = False
    last_progress: str = ""
    check_in: bytes = b""  # the signed CheckIn, resent until the ledger has it
    sent_at: float = 0.0
    overwritten: bool = False  # merged bytes were written over the contribution (in place)


class EarlyMessages:
    """Round messages that came before their attempt started here, at most ``limit_bytes``."""

    def __init__(self, limit_bytes: int = EARLY_BYTES_MAX) -> None:
        self.limit_bytes = limit_bytes
        self.held: list[tuple[str, RoundMessage, bytes | None]] = []
        self.held_bytes = 0

    def keep(self, sender: str, message: RoundMessage, digest: bytes | None) -> bool:
        """Hold ``message``; False when the buffer is full (the message is dropped)."""
        size = _size(message)
        if self.held_bytes + size > self.limit_bytes:
            return False
        self.held.append((sender, message, digest))
        self.held_bytes += size
        return True

    def take(
        self, contract: str, number: int, attempt: int
    ) -> list[tuple[str, RoundMessage, bytes | None]]:
        """The messages of this attempt, in arrival order; those of its earlier attempts are
        dropped (stale)."""
        ready = [
            held
            for held in self.held
            if (held[1].contract, held[1].round, held[1].attempt) == (contract, number, attempt)
        ]
        gone = {id(m) for _, m, _ in ready}
        gone |= {
            id(m)
            for _, m, _ in self.held
            if (m.contract, m.round) == (contract, number) and m.attempt < attempt
        }
        self.held = [held for held in self.held if id(held[1]) not in gone]
        self.held_bytes = sum(_size(m) for _, m, _ in self.held)
        return ready


def _size(message: RoundMessage) -> int:
    return len(getattr(message, "data", b"")) + 64
