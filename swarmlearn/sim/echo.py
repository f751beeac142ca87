"""Echo gossip: a small protocol that exists to test the simulator (not used by real nodes).

Theory of operation
-------------------
A node that gets ``Request(body)`` makes a rumor ``(origin, seq, body)``: it persists it,
delivers it, and pushes it to ``fanout`` random peers. A node that hears a new rumor does the
same (persist, deliver, push on). Pushes get lost to partitions, crashes and loss, so every
``anti_entropy_s`` each node also sends a :class:`Digest` (for each origin, how many of its
rumors it holds without gaps) to one random peer, which answers with what the sender is
missing (:class:`Rumors`) and, if the sender is ahead, with its own digest (push-pull).

Persist before deliver: whatever a node delivered survives its crash, so after the healed
phase every node must hold every rumor ever delivered (:class:`EchoChecker`, liveness), and a
rumor is the same everywhere and delivered once per node (safety).
"""

from __future__ import annotations

import random
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from swarmlearn.p2p.wire import Message
from swarmlearn.sansio import (
    Deliver,
    Effect,
    Input,
    NodeId,
    Persist,
    Receive,
    Request,
    Send,
    SetTimer,
    Start,
    TimerFired,
)
from swarmlearn.sim.checkers import Checker, FailureKind, Violation

if TYPE_CHECKING:
    from swarmlearn.sim.cluster import NodeContext, Simulator

RumorId = tuple[str, int]
STREAM = "rumors"
ANTI_ENTROPY = "anti-entropy"


@dataclass(frozen=True)
class Rumor(Message, tag=0xE0):
    origin: str
    seq: int
    body: bytes


@dataclass(frozen=True)
class Digest(Message, tag=0xE1):
    have: dict[str, int]  # origin -> number of its rumors held, counting from seq 0 without gaps


@dataclass(frozen=True)
class Rumors(Message, tag=0xE2):
    rumors: tuple[Rumor, ...]


@dataclass(frozen=True)
class EchoConfig:
    fanout: int = 3
    anti_entropy_s: float = 1.0
    batch_max: int = 64


class EchoGossip:
    """The echo gossip core (sans-IO)."""

    def __init__(
        self,
        node_id: NodeId,
        peers: tuple[NodeId, ...],
        rng: random.Random,
        config: EchoConfig | None = None,
    ) -> None:
        self.node_id = node_id
        self.peers = peers
        self.rng = rng
        self.config = config or EchoConfig()
        self.known: dict[RumorId, bytes] = {}
        self.top: dict[str, int] = {}  # origin -> highest seq held + 1
        self.contiguous: dict[str, int] = {}  # origin -> rumors held from seq 0 without gaps
        self.next_seq = 0

    @classmethod
    def factory(cls, config: EchoConfig | None = None) -> Any:
        def build(context: NodeContext) -> EchoGossip:
            return cls(context.node_id, context.peers, context.rng, config)

        return build

    def handle(self, event: Input, now: float) -> list[Effect]:
        match event:
            case Start(persisted):
                for origin, seq, body in persisted.get(STREAM, ()):
                    self._hold(Rumor(origin, seq, body))
                self.next_seq = self.top.get(self.node_id, 0)
                return [self._anti_entropy_timer()]
            case Request(body):
                rumor = Rumor(self.node_id, self.next_seq, bytes(body))
                self.next_seq += 1
                return self._accept(rumor, exclude=None)
            case Receive(sender, Rumor() as rumor):
                return self._accept(rumor, exclude=sender)
            case Receive(sender, Rumors(rumors)):
                return [
                    effect for rumor in rumors for effect in self._accept(rumor, exclude=sender)
                ]
            case Receive(sender, Digest(have)):
                return self._answer(sender, have)
            case TimerFired(tag) if tag == ANTI_ENTROPY:
                effects: list[Effect] = [self._anti_entropy_timer()]
                if self.peers:
                    effects.append(Send(self.rng.choice(self.peers), Digest(self._digest())))
                return effects
            case _:
                return []

    def _anti_entropy_timer(self) -> SetTimer:
        jitter = self.rng.uniform(0.9, 1.1)
        return SetTimer(ANTI_ENTROPY, self.config.anti_entropy_s * jitter)

    def _accept(self, rumor: Rumor, exclude: NodeId | None) -> list[Effect]:
        if (rumor.origin, rumor.seq) in self.known:
            return []
        self._hold(rumor)
        fanout = self.config.fanout
        drawn = self.rng.sample(self.peers, min(fanout + 1, len(self.peers)))
        chosen = [peer for peer in drawn if peer != exclude][:fanout]
        return [
            Persist(STREAM, (rumor.origin, rumor.seq, rumor.body)),
            Deliver(("rumor", rumor.origin, rumor.seq, rumor.body)),
            *(Send(peer, rumor) for peer in chosen),
        ]

    def _hold(self, rumor: Rumor) -> None:
        origin = rumor.origin
        self.known[(origin, rumor.seq)] = rumor.body
        self.top[origin] = max(self.top.get(origin, 0), rumor.seq + 1)
        count = self.contiguous.get(origin, 0)
        while (origin, count) in self.known:
            count += 1
        self.contiguous[origin] = count

    def _digest(self) -> dict[str, int]:
        return dict(self.contiguous)

    def _answer(self, sender: NodeId, have: dict[str, int]) -> list[Effect]:
        missing: list[Rumor] = []
        for origin in sorted(self.top):
            for seq in range(have.get(origin, 0), self.top[origin]):
                body = self.known.get((origin, seq))
                if body is not None and len(missing) < self.config.batch_max:
                    missing.append(Rumor(origin, seq, body))
        effects: list[Effect] = [Send(sender, Rumors(tuple(missing)))] if missing else []
        if any(count > self.contiguous.get(origin, 0) for origin, count in have.items()):
            effects.append(Send(sender, Digest(self._digest())))
        return effects


class EchoChecker(Checker):
    """Safety: one body per rumor, delivered once per node. Liveness: every node holds all."""

    name = "echo"

    def __init__(self) -> None:
        self.bodies: dict[Hashable, bytes] = {}
        self.held: dict[NodeId, set[RumorId]] = {}

    def on_deliver(
        self, node: NodeId, incarnation: int, value: Any, time: float
    ) -> Violation | None:
        _, origin, seq, body = value
        key = (origin, seq)
        held = self.held.setdefault(node, set())
        if key in held:
            return Violation(self.name, FailureKind.SAFETY, f"{node} delivered {key} twice", time)
        held.add(key)
        first = self.bodies.setdefault(key, body)
        if first != body:
            message = f"rumor {key}: {node} got {body!r:.40}, others {first!r:.40}"
            return Violation(self.name, FailureKind.SAFETY, message, time)
        return None

    def converged(self, sim: Simulator) -> bool:
        everything = len(self.bodies)
        return all(len(self.held.get(node, ())) == everything for node in sim.alive())

    def progress(self, sim: Simulator) -> str:
        everything = len(self.bodies)
        behind = {
            node: everything - len(self.held.get(node, ()))
            for node in sim.alive()
            if len(self.held.get(node, ())) < everything
        }
        return (
            f"{len(behind)} node(s) behind on {everything} rumors: {dict(list(behind.items())[:5])}"
        )


def corrupt_rumors(node: NodeId, effects: list[Effect]) -> list[Effect]:
    """A byzantine policy: the node forwards every rumor with a different body."""
    rewritten: list[Effect] = []
    for effect in effects:
        if isinstance(effect, Send) and isinstance(effect.message, Rumor):
            forged = Rumor(effect.message.origin, effect.message.seq, b"forged by " + node.encode())
            rewritten.append(Send(effect.to, forged))
        else:
            rewritten.append(effect)
    return rewritten
