"""Consensus in the simulator: validators, byzantine behaviours, checkers and named scenarios.

Validators run the real :class:`ConsensusCore` with the simulator's fast stand-in signatures
(:class:`SimSigner`) and the key-value test application. Byzantine validators keep an honest
core but pass their effects through a policy (the simulator's byzantine seam):

- ``equivocate``: each prevote and precommit goes to half of the peers as cast and to the
  other half flipped (a block hash becomes nil, nil becomes a made-up hash), both signed;
- ``split-proposals``: as proposer, sends two different valid signed blocks (with and without
  the transactions) to the two halves;
- ``silent``: sends nothing at all.

Checkers: agreement (no two nodes commit different blocks at one height), no evidence against
an honest validator (no honest double-sign, across crashes and restarts), and liveness: after
healing, every honest node commits every probe transaction submitted at the heal.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable
from typing import Any

from swarmlearn.consensus.tendermint.app import KeyValueApp
from swarmlearn.consensus.tendermint.core import ConsensusConfig, ConsensusCore
from swarmlearn.consensus.tendermint.crypto import SimSigner, SimVerifier
from swarmlearn.consensus.tendermint.events import Committed, EvidenceFound, Genesis, SubmitTx
from swarmlearn.consensus.tendermint.store import must_sync
from swarmlearn.consensus.tendermint.types import Block, Proposal, Validator, Vote, tx_root
from swarmlearn.sansio import Broadcast, Core, Effect, NodeId, Send
from swarmlearn.sim.checkers import AgreementChecker, Checker, FailureKind, Violation
from swarmlearn.sim.cluster import EffectPolicy, NodeContext, NodeFactory, Simulator
from swarmlearn.sim.network import LinkConfig
from swarmlearn.sim.scenarios import (
    Scenario,
    SetupContext,
    random_faults,
    scenario,
)

CHAIN_ID = "sim-chain"


def genesis_for(nodes: tuple[str, ...]) -> Genesis:
    validators = tuple(Validator(n, SimSigner(n).public_key, 1) for n in nodes)
    return Genesis(CHAIN_ID, 0, validators)


def validator_factory(nodes: tuple[str, ...], config: ConsensusConfig | None = None) -> NodeFactory:
    genesis = genesis_for(nodes)

    def build(context: NodeContext) -> ConsensusCore:
        return ConsensusCore(
            genesis,
            SimSigner(context.node_id),
            SimVerifier(),
            KeyValueApp(),
            context.rng,
            context.peers,
            config,
        )

    return build


# ---------------------------------------------------------------- byzantine policies


def _halves(
    peers: tuple[str, ...] | None, everyone: tuple[str, ...], me: str
) -> tuple[list[str], list[str]]:
    targets = [p for p in (peers if peers is not None else everyone) if p != me]
    return targets[::2], targets[1::2]


def equivocate(everyone: tuple[str, ...]) -> EffectPolicy:
    def policy(node: NodeId, effects: list[Effect]) -> list[Effect]:
        signer = SimSigner(node)
        out: list[Effect] = []
        for effect in effects:
            if isinstance(effect, Broadcast) and isinstance(effect.message, Vote):
                vote = effect.message
                flipped = None if vote.value is not None else b"\xee" * 32
                other = dataclasses.replace(vote, value=flipped, signature=b"")
                other = dataclasses.replace(
                    other, signature=signer.sign(other.sign_bytes(CHAIN_ID))
                )
                first, second = _halves(effect.peers, everyone, node)
                out += [Send(p, vote) for p in first] + [Send(p, other) for p in second]
            else:
                out.append(effect)
        return out

    return policy


def split_proposals(everyone: tuple[str, ...]) -> EffectPolicy:
    def policy(node: NodeId, effects: list[Effect]) -> list[Effect]:
        signer = SimSigner(node)
        out: list[Effect] = []
        for effect in effects:
            if isinstance(effect, Broadcast) and isinstance(effect.message, Proposal):
                proposal = effect.message
                # Two valid blocks: the transactions dropped (or one made up for an empty one).
                txs = () if proposal.block.txs else (b"split-proposal=1",)
                header = dataclasses.replace(proposal.block.header, tx_root=tx_root(txs))
                block = Block(header, txs, proposal.block.last_commit)
                other = dataclasses.replace(proposal, block=block, signature=b"")
                other = dataclasses.replace(
                    other, signature=signer.sign(other.sign_bytes(CHAIN_ID))
                )
                first, second = _halves(effect.peers, everyone, node)
                out += [Send(p, proposal) for p in first] + [Send(p, other) for p in second]
            else:
                out.append(effect)
        return out

    return policy


def silent(node: NodeId, effects: list[Effect]) -> list[Effect]:
    return [e for e in effects if not isinstance(e, Send | Broadcast)]


BYZANTINE: dict[str, Callable[[tuple[str, ...]], EffectPolicy]] = {
    "equivocate": equivocate,
    "split-proposals": split_proposals,
    "silent": lambda everyone: silent,
}


# ---------------------------------------------------------------- checkers


def commit_slot(value: Any) -> tuple[Hashable, Any] | None:
    return (value.height, value.block_hash) if isinstance(value, Committed) else None


class HonestSignerChecker(Checker):
    """Safety: nobody ever holds evidence that an honest validator signed two votes."""

    name = "no-honest-double-sign"

    def __init__(self, byzantine: set[str]) -> None:
        self.byzantine = byzantine

    def on_deliver(
        self, node: NodeId, incarnation: int, value: Any, time: float
    ) -> Violation | None:
        if isinstance(value, EvidenceFound) and value.validator not in self.byzantine:
            message = (
                f"{node} caught honest {value.validator} double-signing at height {value.height}"
            )
            return Violation(self.name, FailureKind.SAFETY, message, time)
        return None


class ProbeChecker(Checker):
    """Liveness: every honest node commits every probe transaction."""

    name = "commits-probes"

    def __init__(self, honest: list[str]) -> None:
        self.honest = honest
        self.probes: set[bytes] = set()
        self.committed: dict[str, set[bytes]] = {node: set() for node in honest}
        self.heights: dict[str, int] = {}

    def on_deliver(
        self, node: NodeId, incarnation: int, value: Any, time: float
    ) -> Violation | None:
        if isinstance(value, Committed):
            self.committed.setdefault(node, set()).update(value.txs)
            self.heights[node] = value.height
        return None

    def converged(self, sim: Simulator) -> bool:
        alive = set(sim.alive())
        return all(self.probes <= self.committed[n] for n in self.honest if n in alive)

    def progress(self, sim: Simulator) -> str:
        behind = [n for n in self.honest if not self.probes <= self.committed[n]]
        heights = {n: self.heights.get(n, 0) for n in behind[:5]}
        return f"{len(behind)} honest node(s) lack probe txs; their heights: {heights}"


# ---------------------------------------------------------------- scenarios


def consensus_scenario(
    name: str,
    description: str,
    *,
    nodes: int = 4,
    byzantine: str | None = None,
    faults: tuple[str, ...] = (),
    link: LinkConfig | None = None,
    fault_phase_s: float = 20.0,
) -> Scenario:
    """Register a scenario: validators, a tx workload, faults, probes at the heal.

    Byzantine validators (the first f by name) stay byzantine after the heal too, so the
    probes show progress with f of them misbehaving.
    """

    def setup(context: SetupContext) -> None:
        sim = context.sim
        sim.durable = must_sync  # the disk store's fsync rule: a lossy crash loses the rest
        count = len(sim.node_ids)
        bad = set(sim.node_ids[: (count - 1) // 3]) if byzantine else set()
        honest = [n for n in sim.node_ids if n not in bad]
        policy = BYZANTINE[byzantine](sim.node_ids) if byzantine else None

        def misbehave() -> None:
            for node in sorted(bad):
                sim.set_policy(node, policy)

        misbehave()
        sim.loop.call_at(context.fault_phase_s + 0.0005, misbehave)  # heal() made them honest
        # These checkers depend on who is byzantine, so the setup adds them.
        probe = ProbeChecker(honest)
        sim.checkers[:0] = [
            AgreementChecker(commit_slot, name="agreement"),
            HonestSignerChecker(bad),
            probe,
        ]
        _tx_workload(context, honest)
        if faults:
            random_faults(context, kinds=faults)
        heal_at = context.fault_phase_s + 0.001
        for node in honest:
            tx = f"probe-{node}=1".encode()
            probe.probes.add(tx)
            sim.request(node, SubmitTx(tx), at=heal_at)
        if bad:
            context.notes.append(f"byzantine ({byzantine}): {', '.join(sorted(bad))}")

    return scenario(
        Scenario(
            name=name,
            description=description,
            factory=lambda: _late_factory,
            checkers=list,
            setup=setup,
            link=link or LinkConfig(latency_min_s=0.001, latency_tail_s=0.002),
            default_nodes=nodes,
            fault_phase_s=fault_phase_s,
            converge_budget_s=60.0,
        )
    )


def _late_factory(context: NodeContext) -> Core:
    """Built per node with the whole membership: every simulated node is a genesis validator."""
    everyone = tuple(sorted((*context.peers, context.node_id)))
    return validator_factory(everyone)(context)


def _tx_workload(context: SetupContext, targets: list[str], rate_per_s: float = 5.0) -> None:
    sim, rng = context.sim, context.workload
    at = rng.expovariate(rate_per_s)
    count = 0
    while at < context.fault_phase_s:
        sim.request(rng.choice(targets), SubmitTx(f"k{count % 50}=v{count}".encode()), at=at)
        count += 1
        at += rng.expovariate(rate_per_s)
    context.notes.append(f"workload: {count} transactions over {context.fault_phase_s:g} s")


consensus_scenario("bft-calm", "4 validators, transactions, no faults")
consensus_scenario(
    "bft-7-partitions",
    "7 validators, isolated nodes and random splits",
    nodes=7,
    faults=("partition", "split"),
)
consensus_scenario(
    "bft-crashes", "4 validators crash and restart from their WAL", faults=("crash",)
)
consensus_scenario(
    "bft-faults",
    "7 validators under every fault kind",
    nodes=7,
    faults=("crash", "partition", "split", "clog", "pause", "skew"),
)
consensus_scenario(
    "bft-lossy",
    "4 validators over links that lose, duplicate and reorder",
    link=LinkConfig(
        latency_min_s=0.002, latency_tail_s=0.01, loss=0.1, duplicate=0.05, reorder=0.1
    ),
)
consensus_scenario(
    "bft-equivocate",
    "10 validators, f=3 equivocate on every vote",
    nodes=10,
    byzantine="equivocate",
)
consensus_scenario(
    "bft-split-proposals",
    "7 validators, f=2 send conflicting proposals",
    nodes=7,
    byzantine="split-proposals",
    faults=("partition",),
)
consensus_scenario(
    "bft-sweep",
    "7 validators, f=2 equivocate, every fault kind (the seed sweep)",
    nodes=7,
    byzantine="equivocate",
    faults=("crash", "partition", "split", "clog", "pause", "skew"),
    fault_phase_s=8.0,
)
consensus_scenario("bft-silent", "10 validators, f=3 silent", nodes=10, byzantine="silent")
consensus_scenario(
    "bft-torn-writes",
    "4 validators crash losing or tearing the WAL records not yet fsynced",
    faults=("crash-lossy", "partition"),
)


# ---------------------------------------------------------------- one clock far ahead

SKEW_S = 600.0  # the skewed validator's clock: 10 minutes ahead


class BlockTimeChecker(Checker):
    """BFT time: every block an honest node commits is stamped at most ``ahead_s`` after the
    true time (honest clocks are exact here) and later than the block before, whatever the
    skewed clock says; a block with transactions at most ``behind_s`` before it when it
    commits (an empty block after a quiet spell or a failed round may be older: it is the
    one that brings time on); and the honest nodes commit the probes sent after the skewed
    validator left before it comes back."""

    name = "bft-time"

    def __init__(self, skewed: str, honest: list[str], back_at_s: float) -> None:
        self.skewed, self.honest, self.back_at_s = skewed, honest, back_at_s
        self.behind_s, self.ahead_s = 0.5, 0.01
        self.last_ms: dict[str, int] = {}
        self.probes: set[bytes] = set()
        self.committed_at: dict[tuple[str, bytes], float] = {}
        self.worst_behind_s = 0.0

    def on_deliver(
        self, node: NodeId, incarnation: int, value: Any, time: float
    ) -> Violation | None:
        if not isinstance(value, Committed) or node == self.skewed:
            return None
        for tx in value.txs:
            self.committed_at.setdefault((node, tx), time)
        behind_s = time - value.time_ms / 1000
        self.worst_behind_s = max(self.worst_behind_s, behind_s)
        problem = ""
        if not -self.ahead_s <= behind_s <= (self.behind_s if value.txs else 10.0):
            problem = f"block {value.height} stamped {-behind_s:+.3f} s from the true time"
        elif value.time_ms <= self.last_ms.get(node, -1):
            problem = f"block {value.height}: time {value.time_ms} ms does not increase"
        self.last_ms[node] = value.time_ms
        return (
            Violation(self.name, FailureKind.SAFETY, f"{node}: {problem}", time)
            if problem
            else None
        )

    def final(self, sim: Simulator) -> list[Violation]:
        late = [
            f"{node} committed {tx.decode()} at {self.committed_at.get((node, tx), -1):.3f} s"
            for node in self.honest
            for tx in sorted(self.probes)
            if not 0 <= self.committed_at.get((node, tx), -1) < self.back_at_s
        ]
        if not late:
            return []
        message = f"no progress while {self.skewed} was away: {'; '.join(late[:3])}"
        return [Violation(self.name, FailureKind.LIVENESS, message, sim.now)]


def _skewed_setup(context: SetupContext) -> None:
    """The first validator's clock runs ``SKEW_S`` ahead; it leaves at 40% of the fault phase
    and is back at the heal. Probes sent just after it left must commit while it is away."""
    sim = context.sim
    sim.durable = must_sync
    skewed, honest = sim.node_ids[0], list(sim.node_ids[1:])
    sim.set_clock(skewed, offset_s=SKEW_S)
    left_at_s = context.fault_phase_s * 0.4
    sim.loop.call_at(left_at_s, lambda: sim.crash(skewed))
    checker = BlockTimeChecker(skewed, honest, context.fault_phase_s)
    sim.checkers[:0] = [AgreementChecker(commit_slot, name="agreement"), checker]
    _tx_workload(context, honest)
    for node in honest:
        tx = f"probe-{node}=1".encode()
        checker.probes.add(tx)
        sim.request(node, SubmitTx(tx), at=left_at_s + 0.5)
    context.notes.append(f"{skewed}: clock {SKEW_S:+g} s, away from {left_at_s:g} s to the heal")


scenario(
    Scenario(
        name="bft-skewed-clock",
        description="4 validators, one clock 10 min ahead that leaves mid-run and comes back",
        factory=lambda: _late_factory,
        checkers=list,
        setup=_skewed_setup,
        link=LinkConfig(latency_min_s=0.001, latency_tail_s=0.002),
        default_nodes=4,
        fault_phase_s=20.0,
        converge_budget_s=60.0,
    )
)
consensus_scenario(
    "bft-split-sweep",
    "7 validators, f=2 send two valid blocks to the two halves, every fault kind (a sweep)",
    nodes=7,
    byzantine="split-proposals",
    faults=("crash", "partition", "split", "clog", "pause", "skew"),
    fault_phase_s=8.0,
)
