"""Simulator helpers for the p2p cores: a swarm builder and checkers (the connections shim
lives in :mod:`swarmlearn.sim.connections`)."""

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
from swarmlearn.p2p.node import P2PNode
from swarmlearn.p2p.peertable import PeerTable, PeerTableConfig
from swarmlearn.sansio import Core, NodeId
from swarmlearn.sim import Checker, FailureKind, NodeContext, Simulator, Violation
from swarmlearn.sim.connections import (
    PORT,
    ShimCounters,
    SimBye,
    SimConnections,
    SimHello,
    SimWelcome,
    address_of,
)

__all__ = [
    "PORT",
    "GossipChecker",
    "ShimCounters",
    "SimBye",
    "SimConnections",
    "SimHello",
    "SimWelcome",
    "SwarmSpec",
    "address_of",
    "core_of",
    "gossip_of",
    "node_ids",
    "publish",
    "swarm_factory",
]


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
        return SimConnections(me, P2PNode(rng, table, gossip), nodes)

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
