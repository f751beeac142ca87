"""The ledger over gossip in the simulator: validators and followers on one p2p network.

Every node runs :class:`~swarmlearn.consensus.tendermint.over_gossip.LedgerOverGossip` (peer table,
gossip, the consensus core) behind the simulator's connections shim, so it talks only over
connections it dialed or accepted. Validators (``v…``) start knowing a few other validators'
addresses (a validator set is public: they dial each other first, as CometBFT's persistent
peers); followers (``f…``) know a few random nodes. Peer exchange does the rest.

Links get a latency drawn per pair from ``[latency_min_s, latency_max_s]`` (symmetric), a
loss rate, and every node a port (its access link) of ``port_bps`` each way.

:class:`LedgerChecker` watches from outside: agreement on every height (validators and
followers), each transaction's commit latency at the validator it was submitted to (p50 must
stay under the scenario's target), and convergence: every validator commits every
transaction, and every follower holds every block the validators committed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from swarmlearn.consensus.tendermint.app import KeyValueApp
from swarmlearn.consensus.tendermint.core import ConsensusConfig, ConsensusCore
from swarmlearn.consensus.tendermint.crypto import SimSigner, SimVerifier
from swarmlearn.consensus.tendermint.events import Committed, SubmitTx
from swarmlearn.consensus.tendermint.over_gossip import LedgerGossipConfig, LedgerOverGossip
from swarmlearn.consensus.tendermint.simulation import commit_slot, genesis_for
from swarmlearn.p2p.gossip import Gossip, GossipConfig
from swarmlearn.p2p.node import P2PNode
from swarmlearn.p2p.peertable import PeerTable, PeerTableConfig
from swarmlearn.sansio import Core, NodeId
from swarmlearn.sim.checkers import AgreementChecker, Checker, FailureKind, Violation
from swarmlearn.sim.cluster import NodeContext, NodeFactory, Simulator
from swarmlearn.sim.connections import SimConnections, address_of
from swarmlearn.sim.network import LinkConfig, PortConfig
from swarmlearn.sim.scenarios import Scenario, SetupContext, scenario


@dataclass(frozen=True)
class LedgerSwarm:
    """The shape of a simulated ledger swarm (sizes come from the node count)."""

    validator_share: float = 1 / 6  # 200 of 1,200
    known: int = 8  # addresses each node starts with
    latency_min_s: float = 0.020
    latency_max_s: float = 0.080
    loss: float = 0.01
    port_bps: float = 100e6
    tx_rate_per_s: float = 4.0
    commit_p50_max_s: float = 1.0
    table: PeerTableConfig = field(default_factory=PeerTableConfig)
    gossip: GossipConfig = field(default_factory=GossipConfig)
    consensus: ConsensusConfig = field(default_factory=ConsensusConfig)
    ledger: LedgerGossipConfig = field(default_factory=LedgerGossipConfig)

    def split(self, count: int) -> tuple[int, int]:
        validators = max(4, min(count, round(count * self.validator_share)))
        return validators, count - validators


def ledger_node_ids(swarm: LedgerSwarm) -> Callable[[int, int], list[str]]:
    def ids(seed: int, count: int) -> list[str]:
        validators, followers = swarm.split(count)
        return [f"v{i:03d}" for i in range(validators)] + [f"f{i:04d}" for i in range(followers)]

    return ids


def is_validator(node: NodeId) -> bool:
    return node.startswith("v")


def ledger_factory(swarm: LedgerSwarm) -> Callable[[], NodeFactory]:
    def late() -> NodeFactory:
        def build(context: NodeContext) -> Core:
            everyone = sorted((*context.peers, context.node_id))
            validators = tuple(n for n in everyone if is_validator(n))
            return _build(swarm, context, validators, everyone)

        return build

    return late


def _build(
    swarm: LedgerSwarm, context: NodeContext, validators: tuple[str, ...], everyone: list[str]
) -> Core:
    me, rng = context.node_id, context.rng
    pool = [n for n in (validators if is_validator(me) else everyone) if n != me]
    known = sorted(rng.sample(pool, min(swarm.known, len(pool))))
    table_config = PeerTableConfig(
        **{
            **swarm.table.__dict__,
            "listen": (address_of(me),),
            "seeds": tuple(address_of(n) for n in known),
        }
    )
    table = PeerTable(me, random.Random(rng.getrandbits(64)), table_config)
    gossip = Gossip(me, random.Random(rng.getrandbits(64)), swarm.gossip)
    p2p = P2PNode(random.Random(rng.getrandbits(64)), table, gossip)
    consensus = ConsensusCore(
        genesis_for(validators),
        SimSigner(me),
        SimVerifier(),
        KeyValueApp(),
        random.Random(rng.getrandbits(64)),
        (),
        swarm.consensus,
    )
    return SimConnections(me, LedgerOverGossip(consensus, p2p, swarm.ledger), everyone)


def ledger_of(sim: Simulator, node: NodeId) -> LedgerOverGossip:
    shim = sim.nodes[node].core
    assert isinstance(shim, SimConnections)
    assert isinstance(shim.inner, LedgerOverGossip)
    return shim.inner


def prepare_links(swarm: LedgerSwarm) -> Callable[[Simulator], None]:
    def prepare(sim: Simulator) -> None:
        def link(src: NodeId, dst: NodeId) -> LinkConfig:
            pair = sorted((src, dst))
            latency_s = sim.seeds.rng("link", *pair).uniform(
                swarm.latency_min_s, swarm.latency_max_s
            )
            return LinkConfig(
                latency_min_s=latency_s, latency_tail_s=0.0, bandwidth_bps=1e9, loss=swarm.loss
            )

        sim.network.link_factory = link
        for node in sim.node_ids:
            sim.network.set_port(node, PortConfig(swarm.port_bps, swarm.port_bps))

    return prepare


# ---------------------------------------------------------------- the checker


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


class LedgerChecker(Checker):
    """Commit latency at the submitter; every validator commits every tx; every follower
    holds every block the validators committed (see the module docstring)."""

    name = "ledger-over-gossip"

    def __init__(self, commit_p50_max_s: float) -> None:
        self.commit_p50_max_s = commit_p50_max_s
        self.submitted: dict[bytes, tuple[NodeId, float]] = {}
        self.latencies_s: dict[bytes, float] = {}
        self.committed: dict[NodeId, set[bytes]] = {}
        self.heights: dict[NodeId, int] = {}
        self._converged: bool | None = None  # recomputed after a commit, not after every event

    def submit(self, sim: Simulator, node: NodeId, tx: bytes, at: float) -> None:
        self.submitted[tx] = (node, at)
        sim.request(node, SubmitTx(tx), at=at)

    def on_deliver(
        self, node: NodeId, incarnation: int, value: Any, time: float
    ) -> Violation | None:
        if isinstance(value, Committed):
            self._converged = None
            self.heights[node] = max(self.heights.get(node, 0), value.height)
            if is_validator(node):
                self.committed.setdefault(node, set()).update(value.txs)
            for tx in value.txs:
                found = self.submitted.get(tx)
                if found is not None and found[0] == node and tx not in self.latencies_s:
                    self.latencies_s[tx] = time - found[1]
        return None

    def _lagging(self, sim: Simulator) -> tuple[list[NodeId], list[NodeId]]:
        validators = [n for n in sim.alive() if is_validator(n)]
        top = max((self.heights.get(n, 0) for n in validators), default=0)
        txs = set(self.submitted)
        slow = [n for n in validators if not txs <= self.committed.get(n, set())]
        behind = [n for n in sim.alive() if not is_validator(n) and self.heights.get(n, 0) < top]
        return slow, behind

    def converged(self, sim: Simulator) -> bool:
        if self._converged is None:
            slow, behind = self._lagging(sim)
            self._converged = not slow and not behind
        return self._converged

    def progress(self, sim: Simulator) -> str:
        slow, behind = self._lagging(sim)
        return f"{len(slow)} validator(s) lack txs, {len(behind)} follower(s) lack blocks"

    def final(self, sim: Simulator) -> list[Violation]:
        p50 = percentile(list(self.latencies_s.values()), 0.5)
        if p50 <= self.commit_p50_max_s:
            return []
        message = f"commit latency p50 {p50:.3f} s > {self.commit_p50_max_s:g} s"
        return [Violation(self.name, FailureKind.LIVENESS, message, sim.now)]

    def report(self, sim: Simulator) -> list[str]:
        values = list(self.latencies_s.values())
        validators = [n for n in sim.node_ids if is_validator(n)]
        followers = [n for n in sim.node_ids if not is_validator(n)]
        top = max((self.heights.get(n, 0) for n in validators), default=0)
        full = sum(1 for n in followers if self.heights.get(n, 0) >= top)
        connections = [len(ledger_of(sim, n).p2p.peers.by_peer) for n in sim.alive()]
        return [
            f"commit latency (tx submitted -> committed at its validator, {len(values)} txs): "
            f"p50 {percentile(values, 0.5):.3f} s, p99 {percentile(values, 0.99):.3f} s, "
            f"max {max(values, default=0.0):.3f} s",
            f"height {top}; followers holding every block: {full}/{len(followers)}",
            f"connections per node: max {max(connections, default=0)}, "
            f"p50 {percentile([float(c) for c in connections], 0.5):g}",
        ]


# ---------------------------------------------------------------- scenarios


def ledger_scenario(
    name: str, description: str, swarm: LedgerSwarm, nodes: int, workload_s: float
) -> Scenario:
    def setup(context: SetupContext) -> None:
        sim, rng = context.sim, context.workload
        checker = LedgerChecker(swarm.commit_p50_max_s)
        sim.checkers[:0] = [AgreementChecker(commit_slot, name="agreement"), checker]
        validators = [n for n in sim.node_ids if is_validator(n)]
        warmup_s = 3 * swarm.table.tick_s + 4 * swarm.gossip.heartbeat_s  # meshes form
        at = warmup_s + rng.expovariate(swarm.tx_rate_per_s)
        count = 0
        while at < context.fault_phase_s:
            checker.submit(sim, rng.choice(validators), f"k{count}=v{count}".encode(), at)
            count += 1
            at += rng.expovariate(swarm.tx_rate_per_s)
        context.notes.append(
            f"{len(validators)} validators, {len(sim.node_ids) - len(validators)} followers; "
            f"workload: {count} transactions from {warmup_s:g} s to {context.fault_phase_s:g} s"
        )

    return scenario(
        Scenario(
            name=name,
            description=description,
            factory=ledger_factory(swarm),
            checkers=list,
            setup=setup,
            link=LinkConfig(latency_min_s=swarm.latency_min_s, latency_tail_s=0.0, loss=swarm.loss),
            default_nodes=nodes,
            fault_phase_s=workload_s,
            converge_budget_s=30.0,
            node_ids=ledger_node_ids(swarm),
            prepare=prepare_links(swarm),
        )
    )


LEDGER_SWARM = LedgerSwarm()

ledger_scenario(
    "ledger-gossip",
    "the ledger over gossip: 1/6 validators, the rest followers, 20-80 ms links, 1% loss, "
    "100 Mbit/s ports (full size: --nodes 1200)",
    LEDGER_SWARM,
    nodes=60,
    workload_s=12.0,
)

ledger_scenario(
    "ledger-gossip-long",
    "ledger-gossip with three times the transactions (36 s of 4 tx/s: the same workload, "
    "longer, for a p50 over some 120 samples; at --nodes 1200 three times the CPU)",
    LEDGER_SWARM,
    nodes=60,
    workload_s=36.0,
)
