"""The sans-IO node contract: every protocol core is ``handle(input, now) -> list[Effect]``.

Theory of operation
-------------------
A protocol core (consensus, gossip, bulk transfer, the round coordinator) is a plain object
that never reads a clock, never draws from global ``random``, and never touches sockets,
files or trio. Its driver feeds it :data:`Input` values with the current time and carries
out the :data:`Effect` values it returns, in order:

======================  =====================================================================
effect                  what the driver does
======================  =====================================================================
:class:`Send`           send ``message`` to one peer (trio: its connection; sim: a link)
:class:`Broadcast`      send ``message`` to ``peers`` (all known peers when ``None``)
:class:`SetTimer`       fire :class:`TimerFired` with ``tag`` after ``delay_s``; a timer set
                        again with the same tag replaces the old one
:class:`CancelTimer`    forget the timer with ``tag`` (a stale one never fires)
:class:`Persist`        append ``record`` to the durable log ``stream`` *before* carrying out
                        any later effect (trio: write + fsync; sim: kept across crashes)
:class:`Deliver`        hand ``value`` to the application (a committed block, a merged model)
:class:`Log`            a log line with structured fields
:class:`Metric`         a counter or gauge sample
======================  =====================================================================

Inputs are :class:`Start` (once per incarnation, with what was persisted), :class:`Receive`
(a message from a peer), :class:`TimerFired` and :class:`Request` (from the local application).

Two drivers run the same cores: ``swarmlearn.roles`` (real nodes) and ``swarmlearn.sim`` (the
deterministic simulator). Node ids are strings (a peer id's printed form on real nodes), so
drivers can sort them: behaviour must never depend on set iteration or string hashes.

This module imports nothing from the rest of swarmlearn but the wire ``Message`` type, so any
package can import it without cycles.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from swarmlearn.p2p.wire import Message

NodeId = str


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Start:
    """The node (re)starts; ``persisted`` holds every record it persisted before, per stream."""

    persisted: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Receive:
    sender: NodeId
    message: Message


@dataclass(frozen=True)
class TimerFired:
    tag: Hashable


@dataclass(frozen=True)
class Request:
    """A request from the local application (submit a transaction, start a round, ...)."""

    value: Any


Input = Start | Receive | TimerFired | Request


# ---------------------------------------------------------------- effects


@dataclass(frozen=True)
class Send:
    to: NodeId
    message: Message


@dataclass(frozen=True)
class Broadcast:
    message: Message
    peers: tuple[NodeId, ...] | None = None  # None: every peer the driver knows


@dataclass(frozen=True)
class SetTimer:
    tag: Hashable
    delay_s: float


@dataclass(frozen=True)
class CancelTimer:
    tag: Hashable


@dataclass(frozen=True)
class Persist:
    stream: str
    record: Any


@dataclass(frozen=True)
class Deliver:
    value: Any


@dataclass(frozen=True)
class Log:
    text: str
    level: str = "info"
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Metric:
    name: str
    value: float


Effect = Send | Broadcast | SetTimer | CancelTimer | Persist | Deliver | Log | Metric


class Core(Protocol):
    """What every protocol core implements."""

    def handle(self, event: Input, now: float) -> list[Effect]: ...
