"""The p2p node (peer table + gossip) in the simulator: discovery from the sentinel, delivery
and copies per message at 100 and 1,000 nodes, loss, partition and heal, a byzantine
publisher, a crash and restart, and determinism."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from swarmlearn.p2p.gossip import GossipConfig, GossipMessage, Verdict
from swarmlearn.p2p.peertable import PeerTableConfig
from swarmlearn.sansio import Effect, NodeId, Send
from swarmlearn.sim import LinkConfig, Simulator
from tests.p2p_sim import (
    GossipChecker,
    SimConnections,
    SwarmSpec,
    core_of,
    gossip_of,
    node_ids,
    publish,
    swarm_factory,
)

pytestmark = pytest.mark.sim

T = "consensus"
LINK = LinkConfig(latency_min_s=0.005, latency_tail_s=0.005, bandwidth_bps=1e9)
D = GossipConfig().d
SETTLE_S = 6.0


@dataclass
class Phase:
    delivered_fraction: float
    copies_per_node: float  # full copies received per node and message, on average


def build(
    count: int, seed: int, spec: SwarmSpec | None = None, link: LinkConfig = LINK
) -> tuple[Simulator, GossipChecker, list[NodeId]]:
    nodes = node_ids(count)
    checker = GossipChecker()
    sim = Simulator(seed, nodes, swarm_factory(spec or SwarmSpec(), nodes), link=link,
                    checkers=[checker])  # fmt: skip
    sim.start()
    return sim, checker, nodes


def phase(
    sim: Simulator, checker: GossipChecker, publishers: list[NodeId], *, budget_s: float = 8.0
) -> Phase:
    """Publish one message from each publisher, 0.2 s apart; run until all are delivered (and
    the stragglers in flight have landed) or the budget is spent."""
    start = sim.now
    copies_before = sim.counters.metrics.get("gossip.copies", 0.0)
    before = set(checker.published)
    for index, node in enumerate(publishers):
        publish(
            sim, checker, node, T, b"m %d %s" % (index, str(start).encode()), start + 0.2 * index
        )
    honest = len(sim.alive()) - len(checker.exempt)
    sim.run(until=checker.all_delivered(honest), time_limit=start + budget_s)
    sim.run(time_limit=sim.now + 1.0)
    new = [mid for mid in checker.published if mid not in before]
    expected = len(new) * (honest - 1)
    missing = sum(len(checker.missing(sim, mid)) for mid in new)
    copies = sim.counters.metrics.get("gossip.copies", 0.0) - copies_before
    return Phase(1 - missing / expected, copies / (len(new) * len(sim.alive())))


def set_loss(sim: Simulator, loss: float) -> None:
    for src, dst in sim.network.stats():
        sim.network.configure(src, dst, LinkConfig(**{**LINK.__dict__, "loss": loss}))


# ---------------------------------------------------------------- discovery


def test_a_hundred_nodes_bootstrap_from_the_sentinel_into_one_connected_swarm() -> None:
    sim, _, nodes = build(100, seed=1)
    sim.run(time_limit=SETTLE_S)
    target = PeerTableConfig().outbound_target
    reach = {nodes[0]}
    frontier = [nodes[0]]
    while frontier:
        for peer in core_of(sim, frontier.pop()).peers.connected():
            if peer not in reach:
                reach.add(peer)
                frontier.append(peer)
    assert reach == set(nodes)
    for node in nodes:
        stats = core_of(sim, node).peers.statistics()
        assert stats.outbound >= target
        assert stats.connected <= PeerTableConfig().links  # d_hi: not N-1
        shim = sim.nodes[node].core
        assert isinstance(shim, SimConnections)
        assert max(shim.links_to.values()) <= 1  # one connection per pair, dials deduplicated
    assert sim.violations == []


@pytest.mark.parametrize(
    ("count", "table"),
    [
        (20, PeerTableConfig()),  # outgrows the full mesh (12) while nodes join
        (6, PeerTableConfig(outbound_target=1, connections_max=3)),
        (12, PeerTableConfig(outbound_target=2, connections_max=6, full_mesh_max=4)),
    ],
    ids=["defaults", "3-links", "6-links"],
)
@pytest.mark.parametrize("gap_s", [0.3, 3.0])
def test_nodes_joining_one_by_one_all_end_in_one_swarm(
    count: int, table: PeerTableConfig, gap_s: float, request: pytest.FixtureRequest
) -> None:
    """Joiners arrive one at a time while the first nodes are a full mesh whose links are all
    taken: each must still find room (the mesh learns of a joiner it refuses and sheds to its
    targets; a refused seed backs off; a peer exchange completes addresses known without one)."""
    for seed in range(request.config.getoption("--sim-seeds") or 10):  # make check: 5
        sim, _, nodes = build(count, seed, SwarmSpec(table=table, gossip=None))
        for node in nodes[1:]:
            sim.crash(node)
        for node in nodes[1:]:
            sim.run(time_limit=sim.now + gap_s)
            sim.restart(node)
        sim.run(time_limit=sim.now + 60.0)
        reach, frontier = {nodes[0]}, [nodes[0]]
        while frontier:
            for peer in core_of(sim, frontier.pop()).peers.connected():
                if peer not in reach:
                    reach.add(peer)
                    frontier.append(peer)
        assert reach == set(nodes), f"seed {seed}: {sorted(set(nodes) - reach)} left out"
        for node in nodes:
            assert len(core_of(sim, node).peers.connected()) <= table.links
        assert sim.violations == []


# ---------------------------------------------------------------- delivery and copies


def test_a_small_swarm_is_a_full_mesh() -> None:
    sim, checker, nodes = build(10, seed=9)
    sim.run(time_limit=SETTLE_S)
    for node in nodes:
        assert gossip_of(sim, node).mesh[T] == set(nodes) - {node}
    assert phase(sim, checker, nodes[:3]).copies_per_node > D  # the price of a full mesh


def test_a_hundred_nodes_deliver_everything_with_at_most_d_plus_one_copies() -> None:
    sim, checker, nodes = build(100, seed=2)
    sim.run(time_limit=SETTLE_S)
    result = phase(sim, checker, nodes[1::20])
    assert result.delivered_fraction == 1.0
    assert result.copies_per_node <= D + 1
    meshes = [len(gossip_of(sim, node).mesh[T]) for node in nodes]
    assert min(meshes) >= 1
    assert max(meshes) <= GossipConfig().d_hi + 1  # one starving peer beyond, until the trim
    assert sim.violations == []


def test_a_hundred_nodes_with_ten_percent_loss_deliver_at_least_99_percent() -> None:
    sim, checker, nodes = build(100, seed=3)
    sim.run(time_limit=SETTLE_S)
    set_loss(sim, 0.1)  # every message on every link, pings and control included
    result = phase(sim, checker, nodes[3::10])
    assert result.delivered_fraction >= 0.99
    assert sim.violations == []


@pytest.mark.slow
def test_a_thousand_nodes_deliver_everything_then_99_percent_under_loss() -> None:
    spec = SwarmSpec(known=8, table=PeerTableConfig(pex_max=16))
    sim, checker, nodes = build(1000, seed=4, spec=spec)
    sim.run(time_limit=4.0)
    clean = phase(sim, checker, nodes[7::400])
    assert clean.delivered_fraction == 1.0
    assert clean.copies_per_node <= D + 1
    set_loss(sim, 0.1)
    lossy = phase(sim, checker, nodes[11::500])
    assert lossy.delivered_fraction >= 0.99
    assert sim.violations == []


# ---------------------------------------------------------------- faults


def test_partition_then_heal_reconnects_the_halves_and_delivers_across() -> None:
    table = PeerTableConfig(ping_interval_s=1.0, ping_timeout_s=3.0, backoff_max_s=4.0)
    sim, checker, nodes = build(40, seed=5, spec=SwarmSpec(table=table))
    sim.run(time_limit=SETTLE_S)
    left, right = nodes[:20], nodes[20:]
    sim.network.partition(left, right)
    sim.run(time_limit=sim.now + 5.0)  # pings time out: cross connections close
    for node in left:
        assert not set(core_of(sim, node).peers.connected()) & set(right)
    during = phase(sim, checker, [left[3]], budget_s=3.0)
    assert checker.missing(sim, list(checker.published)[-1]) == right  # its side only
    assert during.delivered_fraction < 1.0
    sim.network.heal()
    sim.run(time_limit=sim.now + 10.0)  # redials after backoff; meshes re-form
    crossing = sum(
        1 for node in left for peer in core_of(sim, node).peers.connected() if peer in right
    )
    assert crossing > 0
    after = phase(sim, checker, [left[5], right[5]])
    assert after.delivered_fraction == 1.0
    assert sim.violations == []


def test_a_byzantine_publisher_is_penalized_pruned_and_honest_traffic_still_flows() -> None:
    def validate(peer: str, topic: str, data: bytes) -> Verdict:
        return Verdict.REJECT if data.startswith(b"forged") else Verdict.ACCEPT

    sim, checker, nodes = build(30, seed=6, spec=SwarmSpec(validators={T: validate}))
    liar = nodes[4]
    checker.exempt.add(liar)

    def forge(node: NodeId, effects: list[Effect]) -> list[Effect]:
        out: list[Effect] = []
        for effect in effects:
            if isinstance(effect, Send) and isinstance(effect.message, GossipMessage):
                data = b"forged " + effect.message.data
                effect = Send(effect.to, GossipMessage(effect.message.topic, data))
            out.append(effect)
        return out

    sim.run(time_limit=SETTLE_S)
    sim.set_policy(liar, forge)
    for index in range(4):
        sim.request(liar, _publish(b"liar %d" % index), at=sim.now + 0.3 * index)
    result = phase(sim, checker, nodes[10:12])
    assert result.delivered_fraction == 1.0
    penalized = [node for node in nodes if node != liar and gossip_of(sim, node).score(liar) < 0]
    assert penalized
    sim.run(time_limit=sim.now + 2.0)
    assert all(liar not in gossip_of(sim, node).mesh[T] for node in penalized)


def test_a_crashed_node_is_dropped_and_after_restart_rejoins_and_receives() -> None:
    table = PeerTableConfig(ping_interval_s=1.0, ping_timeout_s=3.0, backoff_max_s=2.0)
    sim, checker, nodes = build(30, seed=7, spec=SwarmSpec(table=table))
    sim.run(time_limit=SETTLE_S)
    victim = nodes[9]
    sim.crash(victim)
    sim.run(time_limit=sim.now + 5.0)
    assert all(victim not in core_of(sim, node).peers.connected() for node in sim.alive())
    sim.restart(victim)
    sim.run(time_limit=sim.now + 5.0)
    assert core_of(sim, victim).peers.statistics().outbound >= 1
    assert phase(sim, checker, [nodes[2]]).delivered_fraction == 1.0


def test_the_same_seed_gives_the_same_run() -> None:
    prints = []
    for _ in range(2):
        sim, checker, nodes = build(20, seed=8)
        sim.run(time_limit=3.0)
        phase(sim, checker, nodes[:2])
        prints.append(sim.fingerprint)
    assert prints[0] == prints[1]


def _publish(data: bytes) -> object:
    from swarmlearn.p2p.gossip import Publish

    return Publish(T, data)
