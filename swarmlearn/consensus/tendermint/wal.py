"""The consensus core's write-ahead log records and timer tags, typed (sans-IO).

CometBFT's ``wal.go`` gives every WAL message a type; so does this module. The core persists
one of these on the ``wal`` stream for each input that moved its state (``Persist(WAL,
record)``), and :mod:`swarmlearn.consensus.tendermint.restart` replays them by
type. On disk a record is a row, ``(KIND, *fields)`` (what
:mod:`swarmlearn.consensus.tendermint.store` frames as CBOR); the
store converts at its edge with :func:`to_row` and :func:`from_row`, so files written before
the records were typed read back the same.

- :class:`Started`: the node started height ``height`` (its machine's first round);
- :class:`Heard`: a proposal, vote or block response this node took in;
- :class:`TimedOut`: a timeout of (height, round, step) fired and was acted on;
- :class:`Signed`: a proposal or vote this node signed (durable before it is sent: the
  double-sign guard is rebuilt from these);
- :class:`HeightDone`: the end-of-height marker (durable; replay starts after the last one).

:class:`TimeoutTag` names a consensus timeout in ``SetTimer``/``TimerFired``; ordered, so
(height, round, step) compare as a tuple and a stale one is told apart.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, Final

from swarmlearn.consensus.tendermint.types import BlockResponse, Proposal, Step, Vote


@dataclass(frozen=True)
class Started:
    KIND: ClassVar[str] = "start"
    height: int


@dataclass(frozen=True)
class Heard:
    KIND: ClassVar[str] = "msg"
    message: Proposal | Vote | BlockResponse


@dataclass(frozen=True)
class TimedOut:
    KIND: ClassVar[str] = "timeout"
    height: int
    round: int
    step: Step


@dataclass(frozen=True)
class Signed:
    KIND: ClassVar[str] = "own"
    message: Proposal | Vote


@dataclass(frozen=True)
class HeightDone:
    KIND: ClassVar[str] = "height"
    height: int


WalRecord = Started | Heard | TimedOut | Signed | HeightDone
RECORD_TYPES: Final = {cls.KIND: cls for cls in (Started, Heard, TimedOut, Signed, HeightDone)}
#: The records the store makes durable before the node's next effect (CometBFT's rules).
SYNCED: Final = (Signed, HeightDone)


@dataclass(frozen=True, order=True)
class TimeoutTag:
    """The tag of a consensus timeout timer."""

    height: int
    round: int
    step: Step


def to_row(record: WalRecord) -> tuple[Any, ...]:
    """The record as the store writes it: ``(KIND, *fields)`` (a step as its int)."""
    fields = tuple(int(f) if isinstance(f, Step) else f for f in astuple_shallow(record))
    return (record.KIND, *fields)


def from_row(row: tuple[Any, ...]) -> WalRecord:
    """A row read back from the store as its record; ``ValueError`` for an unknown kind."""
    kind = RECORD_TYPES.get(row[0]) if row else None
    if kind is None:
        raise ValueError(f"not a WAL record: {row[:1]!r}")
    if kind is TimedOut:
        height, round_, step = row[1:]
        return TimedOut(height, round_, Step(step))
    return kind(*row[1:])


def astuple_shallow(record: WalRecord) -> tuple[Any, ...]:
    """The record's fields, not copied (``dataclasses.astuple`` would deep-copy messages)."""
    return tuple(getattr(record, field.name) for field in fields(record))


__all__ = [
    "RECORD_TYPES",
    "SYNCED",
    "Heard",
    "HeightDone",
    "Signed",
    "Started",
    "TimedOut",
    "TimeoutTag",
    "WalRecord",
    "astuple_shallow",
    "from_row",
    "to_row",
]
