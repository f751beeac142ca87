"""The simulator driver: runs sans-IO cores over the simulated network, with faults.

Theory of operation
-------------------
A :class:`Simulator` owns the event loop, the network and one slot per node. A slot holds the
node's core (built by a factory from a :class:`NodeContext`), its timers, its local clock
(offset and drift) and what it persisted. Inputs reach a core only through
:meth:`Simulator.dispatch`, which hands it the node's *local* time and carries out the effects
it returns, in order, exactly as the trio driver does:

- ``Send``/``Broadcast``: encoded with the wire codec (so a message costs its real size on
  the link and the receiver gets a freshly decoded object), then handed to the network;
- ``SetTimer``/``CancelTimer``: a loop event tagged with a generation, so a replaced or
  cancelled timer never fires;
- ``Persist``: appended to the node's log; only this survives a crash. Which records the
  node's store makes durable at once is the simulator's ``durable`` policy (the real
  store's rule: it fsyncs those before the node's next effect; the others are written
  without waiting and become durable with the next fsync of their stream). ``None``: all;
- ``Deliver``: recorded and shown to every checker;
- ``Log``/``Metric``: kept in counters (logs only when verbose).

Faults: :meth:`crash` drops the core, its timers and whatever reaches it until
:meth:`restart`, which builds a fresh core and gives it ``Start(persisted)``;
:meth:`crash_after_persists` crashes a node right after its k-th persist (the effects after it
are never carried out); ``crash(node, lose_unsynced=True)`` is a crash that also loses
what the disk had not made durable: of each stream's records written since its last fsync
a seeded number survive and the rest are gone, the first of them torn (the store cuts
a torn tail off on replay, so a torn record reaches the core as a lost one);
:meth:`pause` holds a node's inputs until it resumes; clock skew is
per node. Byzantine behaviour plugs in at one seam: a policy that may rewrite or withhold a
node's effects before they are carried out.

Every event that matters (deliveries, timers, requests, crashes) is folded into a BLAKE2b
*fingerprint* in order: the same seed must give the same fingerprint.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from swarmlearn.errors import LocalProtocolError
from swarmlearn.p2p.wire import Message, decode_body, encode_body
from swarmlearn.sansio import (
    Broadcast,
    CancelTimer,
    Core,
    Deliver,
    Effect,
    Input,
    Log,
    Metric,
    NodeId,
    Persist,
    Receive,
    Request,
    Send,
    SetTimer,
    Start,
    TimerFired,
)
from swarmlearn.sim.checkers import Checker, Violation
from swarmlearn.sim.loop import EventLoop, Handle, RunOutcome
from swarmlearn.sim.network import Arrival, LinkConfig, Network, Transit
from swarmlearn.sim.rand import SeedTree

FRAME_OVERHEAD_BYTES = 4


@dataclass(frozen=True)
class NodeContext:
    """What a core factory gets: who the node is, who its peers are, its own random stream."""

    node_id: NodeId
    peers: tuple[NodeId, ...]
    rng: random.Random
    incarnation: int


NodeFactory = Callable[[NodeContext], Core]
#: The byzantine seam: (node, effects it returned) -> effects actually carried out.
EffectPolicy = Callable[[NodeId, list[Effect]], list[Effect]]


class CoreCrashed(Exception):
    """A core raised while handling an input: a bug, classed as a crash failure."""


@dataclass
class _Node:
    node_id: NodeId
    core: Core | None = None
    incarnation: int = 0
    persisted: dict[str, list[Any]] = field(default_factory=dict)
    synced: dict[str, int] = field(default_factory=dict)  # per stream: how many are durable
    timers: dict[Any, Handle] = field(default_factory=dict)
    paused: bool = False
    held: list[Input] = field(default_factory=list)
    clock_offset_s: float = 0.0
    clock_drift: float = 0.0
    policy: EffectPolicy | None = None
    crash_after_persists: int | None = None
    deliveries: list[tuple[float, Any]] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.core is not None


@dataclass
class SimCounters:
    messages_sent: int = 0
    bytes_sent: int = 0
    messages_delivered: int = 0
    timers_fired: int = 0
    persists: int = 0
    writes_lost: int = 0
    deliveries: int = 0
    crashes: int = 0
    restarts: int = 0
    logs: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


class Simulator:
    def __init__(
        self,
        seed: int,
        node_ids: Iterable[NodeId],
        factory: NodeFactory,
        *,
        link: LinkConfig | None = None,
        checkers: Iterable[Checker] = (),
        verbose: bool = False,
    ) -> None:
        self.seeds = SeedTree(seed)
        self.loop = EventLoop()
        self.network = Network(self.seeds.rng("network"), link)
        self.factory = factory
        self.checkers = list(checkers)
        self.verbose = verbose
        self._encoded: tuple[Message, bytes] | None = None  # see _execute
        self.counters = SimCounters()
        self.node_ids = tuple(sorted(node_ids))
        if len(set(self.node_ids)) != len(self.node_ids) or not self.node_ids:
            raise LocalProtocolError("node ids must be unique and at least one")
        self.nodes = {node_id: _Node(node_id) for node_id in self.node_ids}
        self.violations: list[Violation] = []
        #: Which ``Persist(stream, record)`` the node's store fsyncs at once (None: every one).
        self.durable: Callable[[str, Any], bool] | None = None
        self._fingerprint = hashlib.blake2b(digest_size=16)
        self._fingerprint.update(str(seed).encode())

    # ------------------------------------------------------------ clocks and fingerprint

    @property
    def now(self) -> float:
        return self.loop.now

    def local_time(self, node_id: NodeId) -> float:
        node = self.nodes[node_id]
        return node.clock_offset_s + (1.0 + node.clock_drift) * self.loop.now

    def set_clock(self, node_id: NodeId, *, offset_s: float = 0.0, drift: float = 0.0) -> None:
        """Skew a node's clock: local = offset + (1 + drift) * virtual time."""
        if not -0.5 < drift < 0.5:
            raise LocalProtocolError("drift must be within (-0.5, 0.5)")
        self.nodes[node_id].clock_offset_s = offset_s
        self.nodes[node_id].clock_drift = drift

    def record(self, *fields: object) -> None:
        self._fingerprint.update(repr((round(self.loop.now, 9), *fields)).encode())

    @property
    def fingerprint(self) -> str:
        return self._fingerprint.hexdigest()

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start every node at the current virtual time."""
        for node_id in self.node_ids:
            self.restart(node_id)

    def restart(self, node_id: NodeId) -> None:
        """(Re)build the node's core from what it persisted and give it ``Start``."""
        node = self.nodes[node_id]
        if node.alive:
            raise LocalProtocolError(f"{node_id} is running; crash it first")
        node.incarnation += 1
        if node.incarnation > 1:
            self.counters.restarts += 1
        peers = tuple(other for other in self.node_ids if other != node_id)
        rng = self.seeds.rng("node", node_id, node.incarnation)
        node.core = self.factory(NodeContext(node_id, peers, rng, node.incarnation))
        self.record("start", node_id, node.incarnation)
        persisted = {stream: tuple(records) for stream, records in sorted(node.persisted.items())}
        self.dispatch(node_id, Start(persisted))

    def crash(self, node_id: NodeId, *, lose_unsynced: bool = False) -> None:
        """The node loses everything it did not persist; nothing reaches it until restarted.
        With ``lose_unsynced``, the disk also loses part of what was written but not yet
        durable (a seeded suffix of each stream's records since its last fsync)."""
        node = self.nodes[node_id]
        if not node.alive:
            return
        if lose_unsynced:
            self._lose_unsynced(node)
        node.core = None
        node.paused = False
        node.held.clear()
        node.crash_after_persists = None
        for handle in node.timers.values():
            handle.cancel()
        node.timers.clear()
        self.counters.crashes += 1
        self.record("crash", node_id)

    def _lose_unsynced(self, node: _Node) -> None:
        rng = self.seeds.rng("storage", node.node_id, node.incarnation)
        for stream, records in sorted(node.persisted.items()):
            synced = node.synced.get(stream, 0)
            kept = synced + rng.randint(0, len(records) - synced)
            if kept < len(records):
                self.counters.writes_lost += len(records) - kept
                self.record("lost-writes", node.node_id, stream, len(records) - kept)
                del records[kept:]
            node.synced[stream] = len(records)

    def crash_after_persists(self, node_id: NodeId, count: int) -> None:
        """Crash the node right after its next ``count``-th persist (later effects are lost)."""
        if count < 1:
            raise LocalProtocolError("count must be >= 1")
        self.nodes[node_id].crash_after_persists = count

    def pause(self, node_id: NodeId, duration_s: float) -> None:
        """Hold the node's inputs (messages, timers) for ``duration_s``, then hand them over."""
        node = self.nodes[node_id]
        if not node.alive or node.paused:
            return
        node.paused = True
        self.record("pause", node_id)
        self.loop.call_later(duration_s, lambda: self._resume(node_id))

    def _resume(self, node_id: NodeId) -> None:
        node = self.nodes[node_id]
        if not node.paused:
            return
        node.paused = False
        self.record("resume", node_id)
        held, node.held = node.held, []
        for event in held:
            self.dispatch(node_id, event)

    def set_policy(self, node_id: NodeId, policy: EffectPolicy | None) -> None:
        """Plug a byzantine behaviour into the node's effects (None: honest again)."""
        self.nodes[node_id].policy = policy

    def request(self, node_id: NodeId, value: Any, at: float | None = None) -> None:
        """A local application request to ``node_id``, now or at virtual time ``at``."""

        def fire() -> None:
            self.record("request", node_id, value)
            self.dispatch(node_id, Request(value))

        if at is None:
            fire()
        else:
            self.loop.call_at(at, fire)

    def alive(self) -> list[NodeId]:
        return [node_id for node_id in self.node_ids if self.nodes[node_id].alive]

    # ------------------------------------------------------------ the driver loop

    def dispatch(self, node_id: NodeId, event: Input) -> None:
        node = self.nodes[node_id]
        if node.core is None:
            return
        if node.paused:
            node.held.append(event)
            return
        try:
            effects = node.core.handle(event, self.local_time(node_id))
        except Exception as error:
            raise CoreCrashed(
                f"{node_id} raised {type(error).__name__}: {error} handling {event!r:.200}"
            ) from error
        if node.policy is not None:
            effects = node.policy(node_id, effects)
        self._execute(node, effects)

    def _execute(self, node: _Node, effects: list[Effect]) -> None:
        self._encoded = None  # one core's sends of one message object (a gossip forward)
        for effect in effects:
            if not node.alive:
                return  # crashed part-way (crash_after_persists)
            match effect:
                case Send(to, message):
                    self._send(node.node_id, (to,), message)
                case Broadcast(message, peers):
                    targets = peers if peers is not None else self.node_ids
                    self._send(node.node_id, [p for p in targets if p != node.node_id], message)
                case SetTimer(tag, delay_s):
                    self._set_timer(node, tag, delay_s)
                case CancelTimer(tag):
                    handle = node.timers.pop(tag, None)
                    if handle is not None:
                        handle.cancel()
                case Persist(stream, record):
                    self._persist(node, stream, record)
                case Deliver(value):
                    self._deliver(node, value)
                case Log(text, level, fields):
                    self.counters.logs += 1
                    if self.verbose:
                        print(f"{self.now:12.6f} {node.node_id} {level}: {text} {dict(fields)}")
                case Metric(name, value):
                    self.counters.metrics[name] = self.counters.metrics.get(name, 0.0) + value
                case _:
                    raise LocalProtocolError(f"{node.node_id} returned a non-effect {effect!r}")

    def _set_timer(self, node: _Node, tag: Any, delay_s: float) -> None:
        old = node.timers.pop(tag, None)
        if old is not None:
            old.cancel()
        incarnation = node.incarnation
        virtual_delay = max(0.0, delay_s) / (1.0 + node.clock_drift)

        def fire() -> None:
            if node.incarnation != incarnation or node.timers.get(tag) is not handle:
                return
            del node.timers[tag]
            self.counters.timers_fired += 1
            self.record("timer", node.node_id, tag)
            self.dispatch(node.node_id, TimerFired(tag))

        handle = self.loop.call_later(virtual_delay, fire)
        node.timers[tag] = handle

    def _persist(self, node: _Node, stream: str, record: Any) -> None:
        records = node.persisted.setdefault(stream, [])
        records.append(record)
        if self.durable is None or self.durable(stream, record):
            node.synced[stream] = len(records)  # an fsync covers the earlier writes too
        self.counters.persists += 1
        if node.crash_after_persists is not None:
            node.crash_after_persists -= 1
            if node.crash_after_persists == 0:
                self.crash(node.node_id)

    def _deliver(self, node: _Node, value: Any) -> None:
        node.deliveries.append((self.now, value))
        self.counters.deliveries += 1
        self.record("deliver", node.node_id, value)
        for checker in self.checkers:
            violation = checker.on_deliver(node.node_id, node.incarnation, value, self.now)
            if violation is not None:
                self.violations.append(violation)

    def _send(self, src: NodeId, targets: Iterable[NodeId], message: Message) -> None:
        if self._encoded is not None and self._encoded[0] is message:
            data = self._encoded[1]  # the same object again: the same bytes
        else:
            head, payload = encode_body(message)
            data = head + bytes(payload)
            self._encoded = (message, data)
        size = len(data) + FRAME_OVERHEAD_BYTES
        for dst in targets:
            if dst not in self.nodes:
                raise LocalProtocolError(f"{src} sent to unknown node {dst!r}")
            self.counters.messages_sent += 1
            self.counters.bytes_sent += size
            for transit in self.network.transmit(src, dst, size, self.now):
                self._schedule_arrival(src, dst, data, size, transit.epoch, transit.at, transit)

    def _schedule_arrival(
        self,
        src: NodeId,
        dst: NodeId,
        data: bytes,
        size: int,
        epoch: int,
        at: float,
        transit: Transit | None = None,
    ) -> None:
        """Deliver at ``at``; a ``transit`` first goes through the receiver's ingress port
        (in the order messages reach it: the wait, if any, is a second event)."""

        def arrive() -> None:
            if transit is not None:
                through = self.network.ingress(dst, size, transit.first_bit, self.now)
                if through > self.now:
                    self._schedule_arrival(src, dst, data, size, epoch, through)
                    return
            verdict = self.network.arrive(src, dst, size, epoch, self.now)
            if verdict is Arrival.HOLD:
                self._schedule_arrival(
                    src, dst, data, size, epoch, self.network.held_until(src, dst)
                )
                return
            if verdict is Arrival.DROP or not self.nodes[dst].alive:
                return
            message = decode_body(data)
            self.counters.messages_delivered += 1
            self.record("recv", src, dst, message.TAG, size)
            self.dispatch(dst, Receive(src, message))

        self.loop.call_at(at, arrive)

    # ------------------------------------------------------------ running

    def run(
        self,
        *,
        until: Callable[[], bool] | None = None,
        time_limit: float | None = None,
        max_events: int | None = None,
    ) -> RunOutcome:
        return self.loop.run(until=until, time_limit=time_limit, max_events=max_events)

    def converged(self) -> bool:
        return all(checker.converged(self) for checker in self.checkers)
