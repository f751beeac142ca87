"""A probe core for simulator tests: does what requests tell it and records what it sees."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from swarmlearn.p2p.wire import Message, Payload
from swarmlearn.sansio import (
    Broadcast,
    Deliver,
    Effect,
    Input,
    Persist,
    Receive,
    Request,
    Send,
    SetTimer,
    Start,
    TimerFired,
)
from swarmlearn.sim.cluster import NodeContext


@dataclass(frozen=True)
class Note(Message, tag=0xC8):
    text: str


@dataclass(frozen=True)
class Blob(Message, tag=0xC9):
    data: Payload


@dataclass
class Probe:
    """Requests: ("send", to, text), ("broadcast", text), ("blob", to, size),
    ("persist", value), ("remember", value), ("timer", tag, delay), ("deliver", value),
    ("many", [requests...]), ("boom",)."""

    node_id: str
    incarnation: int
    started_with: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    memory: list[Any] = field(default_factory=list)
    received: list[tuple[float, str, Message]] = field(default_factory=list)
    fired: list[tuple[float, Any]] = field(default_factory=list)
    seen_now: list[float] = field(default_factory=list)

    def handle(self, event: Input, now: float) -> list[Effect]:
        self.seen_now.append(now)
        match event:
            case Start(persisted):
                self.started_with = dict(persisted)
                return []
            case Receive(sender, message):
                self.received.append((now, sender, message))
                return []
            case TimerFired(tag):
                self.fired.append((now, tag))
                return []
            case Request(value):
                return self._do(value)
        return []

    def _do(self, request: tuple[Any, ...]) -> list[Effect]:
        match request:
            case ("send", to, text):
                return [Send(to, Note(text))]
            case ("broadcast", text):
                return [Broadcast(Note(text))]
            case ("blob", to, size):
                return [Send(to, Blob(bytes(size)))]
            case ("persist", value):
                return [Persist("log", value)]
            case ("remember", value):
                self.memory.append(value)
                return []
            case ("timer", tag, delay):
                return [SetTimer(tag, delay)]
            case ("deliver", value):
                return [Deliver(value)]
            case ("many", requests):
                return [effect for item in requests for effect in self._do(item)]
            case ("boom",):
                raise RuntimeError("probe asked to fail")
        raise AssertionError(f"unknown probe request {request!r}")


def probe_factory(context: NodeContext) -> Probe:
    return Probe(context.node_id, context.incarnation)
