"""Simulator helpers for the p2p cores: connections over the simulated network, and checkers.

The simulator delivers messages between any two nodes; real nodes talk only over connections
they dialed or accepted. :class:`SimConnections` wraps a node's core and plays the trio
driver's part: a ``Deliver(Dial)`` becomes a :class:`SimHello` to the addressed node, whose
:class:`SimWelcome` completes the "handshake" (both sides then get ``Connected``); a
``Deliver(Close)`` becomes a :class:`SimBye`. Messages to or from a peer without a live
connection are dropped, as a real node would have no socket to carry them. Handshake messages
go over the same lossy, partitionable links as everything else, so a partition stops dials
and a lost hello is a dial that times out.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from swarmlearn.p2p.gossip import (
    Gossip,
    GossipConfig,
    GossipDelivery,
    Publish,
    Validator,
    message_id,
)
from swarmlearn.p2p.multiaddr import PeerAddress
from swarmlearn.p2p.node import P2PNode, SubCore
from swarmlearn.p2p.peertable import (
    Close,
    Connected,
    Dial,
    DialFailed,
    Disconnected,
    PeerTable,
    PeerTableConfig,
)
from swarmlearn.p2p.wire import Message
from swarmlearn.sansio import (
    Broadcast,
    Core,
    Deliver,
    Effect,
    Input,
    NodeId,
    Receive,
    Request,
    Send,
)
from swarmlearn.sim import Checker, FailureKind, NodeContext, Simulator, Violation

PORT = 30303


@dataclass(frozen=True)
class SimHello(Message, tag=0xD8):
    link: int  # the dialer's counter: (dialer, link) names the connection on both sides
    key: bytes


@dataclass(frozen=True)
class SimWelcome(Message, tag=0xD9):
    link: int
    key: bytes


@dataclass(frozen=True)
class SimBye(Message, tag=0xDA):
    dialer: str
    link: int


def address_of(node: NodeId) -> PeerAddress:
    return PeerAddress(node, PORT, node)


@dataclass
class ShimCounters:
    dropped_unconnected: int = 0


class SimConnections:
    """Wraps a p2p core; turns dial/close commands into handshake messages (see module doc)."""

    def __init__(self, me: NodeId, inner: Core, nodes: Sequence[NodeId]) -> None:
        self.me = me
        self.inner = inner
        self.key = b"key:" + me.encode()
        self.nodes = frozenset(nodes)
        self.next_link = 0
        self.next_conn = 0
        self.pending: dict[int, PeerAddress] = {}
        self.live: dict[int, tuple[NodeId, tuple[NodeId, int]]] = {}  # conn -> (peer, link)
        self.by_link: dict[tuple[NodeId, int], int] = {}
        self.links_to: dict[NodeId, int] = {}
        self.counters = ShimCounters()

    def connected_to(self, peer: NodeId) -> bool:
        return self.links_to.get(peer, 0) > 0

    def _close(self, conn: int) -> tuple[NodeId, tuple[NodeId, int]] | None:
        found = self.live.pop(conn, None)
        if found is not None:
            self.by_link.pop(found[1], None)
            self.links_to[found[0]] -= 1
        return found

    def handle(self, event: Input, now: float) -> list[Effect]:
        match event:
            case Receive(sender, SimHello(link, key)):
                conn = self._open(sender, (sender, link))
                hello: list[Effect] = [Send(sender, SimWelcome(link, self.key))]
                return hello + self._inner(Request(Connected(conn, sender, key, False)), now)
            case Receive(sender, SimWelcome(link, key)):
                address = self.pending.pop(link, None)
                conn = self._open(sender, (self.me, link))
                return self._inner(Request(Connected(conn, sender, key, True, address)), now)
            case Receive(sender, SimBye(dialer, link)):
                found = self.by_link.get((dialer, link))
                if found is None or self._close(found) is None:
                    return []
                return self._inner(Request(Disconnected(found, "closed by peer")), now)
            case Receive(sender, _) if not self.connected_to(sender):
                self.counters.dropped_unconnected += 1
                return []
        return self._inner(event, now)

    def _open(self, peer: NodeId, link: tuple[NodeId, int]) -> int:
        self.next_conn += 1
        self.live[self.next_conn] = (peer, link)
        self.by_link[link] = self.next_conn
        self.links_to[peer] = self.links_to.get(peer, 0) + 1
        return self.next_conn

    def _inner(self, event: Input, now: float) -> list[Effect]:
        out: list[Effect] = []
        for effect in self.inner.handle(event, now):
            match effect:
                case Deliver(Dial(address)):
                    out += self._dial(address, now)
                case Deliver(Close(conn, _)):
                    found = self._close(conn)
                    if found is not None:
                        out.append(Send(found[0], SimBye(*found[1])))
                case Send(to, _) if not self.connected_to(to):
                    self.counters.dropped_unconnected += 1
                case Broadcast(message, peers):
                    targets = sorted({p for p, _ in self.live.values()})
                    chosen = [p for p in targets if peers is None or p in peers]
                    out += [Send(p, message) for p in chosen]
                case _:
                    out.append(effect)
        return out

    def _dial(self, address: PeerAddress, now: float) -> list[Effect]:
        if address.host not in self.nodes or address.host == self.me:
            return self._inner(Request(DialFailed(address, "no such host")), now)
        self.next_link += 1
        self.pending[self.next_link] = address
        return [Send(address.host, SimHello(self.next_link, self.key))]


# ---------------------------------------------------------------- building a swarm


@dataclass(frozen=True)
class SwarmSpec:
    """How every node of a simulated swarm is built."""

    table: PeerTableConfig = field(default_factory=PeerTableConfig)
    gossip: GossipConfig | None = field(default_factory=GossipConfig)
    topics: tuple[str, ...] = ("consensus",)
    seeds: tuple[str, ...] = ("n000",)  # bootstrap from these nodes' plain host:port
    known: int = 0  # also start knowing this many random peers' addresses
    validators: dict[str, Validator] = field(default_factory=dict)
    transfer: Callable[[NodeContext], SubCore] | None = None


def node_ids(count: int) -> list[NodeId]:
    return [f"n{index:03d}" if count <= 1000 else f"n{index:04d}" for index in range(count)]


def swarm_factory(spec: SwarmSpec, nodes: Sequence[NodeId]) -> Callable[[NodeContext], Core]:
    def build(context: NodeContext) -> Core:
        me = context.node_id
        rng = context.rng
        seeds = [PeerAddress(seed, PORT) for seed in spec.seeds if seed != me]
        if spec.known:
            others = [n for n in nodes if n != me]
            seeds += [address_of(n) for n in sorted(rng.sample(others, spec.known))]
        config = PeerTableConfig(
            **{**spec.table.__dict__, "listen": (address_of(me),), "seeds": tuple(seeds)}
        )
        table = PeerTable(me, random.Random(rng.getrandbits(64)), config)
        gossip = None
        if spec.gossip is not None:
            gossip_rng = random.Random(rng.getrandbits(64))
            gossip = Gossip(me, gossip_rng, spec.gossip, spec.validators, spec.topics)
        transfer = spec.transfer(context) if spec.transfer is not None else None
        return SimConnections(me, P2PNode(rng, table, gossip, transfer), nodes)

    return build


def core_of(sim: Simulator, node: NodeId) -> P2PNode:
    shim = sim.nodes[node].core
    assert isinstance(shim, SimConnections)
    assert isinstance(shim.inner, P2PNode)
    return shim.inner


def gossip_of(sim: Simulator, node: NodeId) -> Gossip:
    gossip = core_of(sim, node).gossip
    assert isinstance(gossip, Gossip)
    return gossip


# ---------------------------------------------------------------- checkers


class GossipChecker(Checker):
    """Safety: a node delivers a message at most once per incarnation, with its published
    content. Liveness: every live node (but the publisher) delivered every published message."""

    name = "gossip"

    def __init__(self) -> None:
        self.published: dict[bytes, tuple[NodeId, str, bytes]] = {}
        self.holders: dict[bytes, set[tuple[NodeId, int]]] = {}
        self.exempt: set[NodeId] = set()  # nodes not expected to deliver (byzantine ones)
        self.deliveries = 0  # first deliveries of expected messages, all nodes

    def expect(self, mid: bytes, publisher: NodeId, topic: str, data: bytes) -> None:
        self.published[mid] = (publisher, topic, data)
        self.holders.setdefault(mid, set())

    def on_deliver(
        self, node: NodeId, incarnation: int, value: Any, time: float
    ) -> Violation | None:
        if not isinstance(value, GossipDelivery):
            return None
        holders = self.holders.setdefault(value.message_id, set())
        if (node, incarnation) in holders:
            return Violation(self.name, FailureKind.SAFETY, f"{node} delivered twice", time)
        holders.add((node, incarnation))
        expected = self.published.get(value.message_id)
        self.deliveries += expected is not None
        if expected is not None and (expected[1], expected[2]) != (value.topic, value.data):
            return Violation(self.name, FailureKind.SAFETY, f"{node}: altered message", time)
        return None

    def missing(self, sim: Simulator, mid: bytes) -> list[NodeId]:
        publisher = self.published[mid][0]
        have = {node for node, _ in self.holders.get(mid, ())}
        return [
            node
            for node in sim.alive()
            if node != publisher and node not in have and node not in self.exempt
        ]

    def delivered_fraction(self, sim: Simulator) -> float:
        expected = sum(len(sim.alive()) - 1 - len(self.exempt) for _ in self.published)
        missing = sum(len(self.missing(sim, mid)) for mid in self.published)
        return 1.0 - missing / expected if expected else 1.0

    def converged(self, sim: Simulator) -> bool:
        return all(not self.missing(sim, mid) for mid in self.published)

    def all_delivered(self, honest: int) -> Callable[[], bool]:
        """A cheap ``until`` condition for runs without crashes: every honest node but the
        publisher delivered every expected message."""
        return lambda: self.deliveries >= len(self.published) * (honest - 1)


def publish(
    sim: Simulator, checker: GossipChecker, node: NodeId, topic: str, data: bytes, at: float
) -> bytes:
    mid = message_id(topic, data)
    checker.expect(mid, node, topic, data)
    sim.request(node, Publish(topic, data), at=at)
    return mid
