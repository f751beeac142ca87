"""Sync rounds in the simulator: whole swarm nodes (ledger + SL) with real certificates.

Each simulated node runs :class:`SwarmNodeCore`: the consensus core (with the simulator's
stand-in vote signatures, for speed) and the swarm application, which checks every ledger
transaction's real Ed25519 signature against a real certificate. Keys and certificates are
derived from the seed, so a seed replays the whole run, node ids included.

Workload: every node contributes a small numpy model each round. Checkers: every participant
of a round ends with the same bytes, whose root the ledger holds (safety); no round outlives
its last deadline by more than a grace margin (liveness); every round ends (DONE or FAILED:
never a silent partial merge). Scenarios: calm rounds at 3, 10 and 50 nodes, and at 10 and 50
nodes with 5% of every link's messages lost (``rounds-*-lossy``: the round's loss repair,
:mod:`swarmlearn.roles.sl.repair`, must get every round through), a participant
killed at a random moment of a round (it restarts and rejoins later), a partition during the
exchange, a byzantine contributor whose chunks do not match its commitment; and each merge
method (``rounds-<method>``), with a participant killed mid-round under the geometric median
(its partial sums never come) and an owner whose partial sums are garbage.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from swarmlearn.consensus.ledger.app import DEFAULT_CONTRACT, SwarmApp, sign_transaction
from swarmlearn.consensus.ledger.batching import expects_more
from swarmlearn.consensus.ledger.rounds import RoundStatus
from swarmlearn.consensus.tendermint.core import ConsensusCore
from swarmlearn.consensus.tendermint.crypto import SimSigner, SimVerifier
from swarmlearn.consensus.tendermint.events import Genesis
from swarmlearn.consensus.tendermint.types import Validator
from swarmlearn.merge import ModelState, flatten, layout_of
from swarmlearn.merge.manifest import Layout
from swarmlearn.p2p.identity import Identity, IdentityPaths, Role, describe_certificate
from swarmlearn.p2p.wire import Message
from swarmlearn.roles.node.core import SwarmNodeCore
from swarmlearn.roles.sl.core import (
    Contribute,
    MergePartials,
    RoundChunk,
    RoundDone,
    RoundFailed,
)
from swarmlearn.sansio import Effect, NodeId, Send
from swarmlearn.sim.checkers import Checker, FailureKind, Violation
from swarmlearn.sim.cluster import NodeContext, Simulator
from swarmlearn.sim.network import LinkConfig, PortConfig
from swarmlearn.sim.scenarios import Scenario, SetupContext, scenario

CHAIN = "rounds-sim"
CHUNK_BYTES = 2048
ROUND_EVERY_S = 8.0
NOT_BEFORE = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
DEADLINE_GRACE_S = 5.0


@dataclass(frozen=True)
class SimSwarm:
    identities: dict[str, Identity]
    genesis: Genesis


_SWARMS: dict[tuple[str, ...], SimSwarm] = {}


def _key(label: str) -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.from_private_bytes(hashlib.sha256(label.encode()).digest())


def _certificate(
    subject: str,
    key: ed25519.Ed25519PrivateKey,
    issuer: x509.Name,
    signer: ed25519.Ed25519PrivateKey,
    ca: bool,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(hashlib.sha256(subject.encode()).digest()[:8], "big"))
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_BEFORE + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        usages = [
            ExtendedKeyUsageOID.SERVER_AUTH,
            ExtendedKeyUsageOID.CLIENT_AUTH,
            Role.SN.oid,
            Role.SL.oid,
        ]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(signer, None)


def sim_swarm(seed: int, count: int) -> SimSwarm:
    """A CA and ``count`` SN+SL node identities, all derived from ``seed`` (in memory)."""
    ca_key = _key(f"ca/{seed}")
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"sim CA {seed}")])
    ca = _certificate(f"sim CA {seed}", ca_key, ca_name, ca_key, True)
    identities = {}
    for index in range(count):
        key = _key(f"node/{seed}/{index}")
        cert = _certificate(f"node{index}-{seed}", key, ca_name, ca_key, False)
        info = describe_certificate(cert)
        paths = IdentityPaths(Path("-"), Path("-"), Path("-"))
        identities[str(info.peer_id)] = Identity(paths, cert, (), key, (ca,), info)
    validators = tuple(Validator(n, SimSigner(n).public_key, 1) for n in sorted(identities))
    start_ms = int((NOT_BEFORE + dt.timedelta(days=1)).timestamp() * 1000)
    genesis = Genesis(CHAIN, start_ms, validators, b"", ca.public_bytes(Encoding.DER))
    swarm = SimSwarm(identities, genesis)
    _SWARMS[tuple(sorted(identities))] = swarm
    return swarm


def node_ids(seed: int, count: int) -> list[str]:
    return sorted(sim_swarm(seed, count).identities)


def build_node(context: NodeContext) -> SwarmNodeCore:
    swarm = _SWARMS[tuple(sorted((*context.peers, context.node_id)))]
    identity = swarm.identities[context.node_id]
    seated = frozenset(v.node for v in swarm.genesis.validators)
    app = SwarmApp(CHAIN, swarm.genesis.ca_certificate, swarm.genesis.time_ms, seated)
    signer = SimSigner(context.node_id)
    consensus = ConsensusCore(swarm.genesis, signer, SimVerifier(), app, context.rng, context.peers)
    consensus.awaits = partial(expects_more, app)  # as a real node: proposals batch a round

    def sign(body: Message) -> bytes:
        return sign_transaction(identity, CHAIN, body)

    return SwarmNodeCore(consensus, app, sign, identity.certificate.public_bytes(Encoding.DER))


# ---------------------------------------------------------------- checkers


class SameMergeChecker(Checker):
    """Safety: every participant that ends a round holds the same bytes; the ledger says so."""

    name = "same-merge"

    def __init__(self) -> None:
        self.done: dict[tuple[str, int], dict[str, RoundDone]] = {}
        self.failed: dict[tuple[str, int], str] = {}

    def on_deliver(
        self, node: NodeId, incarnation: int, value: Any, time: float
    ) -> Violation | None:
        if isinstance(value, RoundFailed):
            self.failed[(value.contract, value.round)] = value.reason
        if not isinstance(value, RoundDone):
            return None
        seen = self.done.setdefault((value.contract, value.round), {})
        seen[node] = value
        first = next(iter(seen.values()))
        if (value.root, value.flat) != (first.root, first.flat):
            root = first.root.hex()[:8]
            message = f"round {value.round}: {node[:8]} holds other merged weights than {root}"
            return Violation(self.name, FailureKind.SAFETY, message, time)
        return None

    def final(self, sim: Simulator) -> list[Violation]:
        violations = []
        ledger = _any_app(sim)
        for (contract, number), holders in sorted(self.done.items()):
            record = ledger.state.contracts[contract].rounds.get(number) if ledger else None
            root = next(iter(holders.values())).root
            if record is None or record.merged_root != root:
                message = (
                    f"round {number}: the ledger does not hold the merged root {root.hex()[:8]}"
                )
                violations.append(Violation(self.name, FailureKind.SAFETY, message, sim.now))
        return violations


class RoundsEndChecker(Checker):
    """Liveness: every round ends (done or failed) in time, on every live participant; with
    ``merge_all``, every round ends DONE (a scenario with no fault but the network's)."""

    name = "rounds-end"

    def __init__(self, rounds: int, *, merge_all: bool = False) -> None:
        self.rounds = rounds
        self.merge_all = merge_all

    def converged(self, sim: Simulator) -> bool:
        app = _any_app(sim)
        if app is None:
            return False
        records = app.state.contracts[DEFAULT_CONTRACT].rounds
        return len(records) >= self.rounds and all(r.finished for r in records.values())

    def final(self, sim: Simulator) -> list[Violation]:
        app = _any_app(sim)
        late, failed = [], []
        for record in app.state.contracts[DEFAULT_CONTRACT].rounds.values() if app else ():
            if self.merge_all and record.status == RoundStatus.FAILED:
                failed.append(f"round {record.number} failed: {record.reason}")
            finished = record.finished_ms
            if finished is not None and record.closed_ms is not None and record.deadline_ms:
                late += (
                    [record.number]
                    if finished > record.deadline_ms + DEADLINE_GRACE_S * 1000
                    else []
                )
        violations = [Violation(self.name, FailureKind.LIVENESS, f, sim.now) for f in failed]
        if late:
            text = f"rounds {late} ended past their deadline"
            violations.append(Violation(self.name, FailureKind.LIVENESS, text, sim.now))
        return violations

    def progress(self, sim: Simulator) -> str:
        app = _any_app(sim)
        if app is None:
            return "no live node"
        records = app.state.contracts[DEFAULT_CONTRACT].rounds
        return "rounds: " + ", ".join(f"{n} {r.status.value}" for n, r in sorted(records.items()))


def _any_app(sim: Simulator) -> SwarmApp | None:
    for node in sim.alive():
        core = sim.nodes[node].core
        if isinstance(core, SwarmNodeCore):
            return core.app
    return None


# ---------------------------------------------------------------- workload and faults


def _model(rng: np.random.Generator) -> ModelState:
    arrays: dict[str, np.ndarray[Any, Any]] = {
        "fc.weight": rng.standard_normal((32, 24)).astype(np.float32),
        "fc.bias": rng.standard_normal(24).astype(np.float32),
        "bn.num_batches_tracked": np.array(rng.integers(0, 100), dtype=np.int64),
    }
    return ModelState(arrays)


def contributions(
    context: SetupContext, rounds: int, min_peers: int, method: str = "mean"
) -> Layout:
    sim, rng = context.sim, np.random.default_rng(context.workload.getrandbits(32))
    layout = layout_of(_model(rng), chunk_bytes=CHUNK_BYTES)
    for number in range(rounds):
        at = 1.0 + ROUND_EVERY_S * number
        for node in sim.node_ids:
            flat = bytes(flatten(_model(rng), layout))
            weight = random.Random(node).randint(1, 100)
            contribution = Contribute(DEFAULT_CONTRACT, flat, layout, weight, min_peers, method)
            sim.request(node, contribution, at=at)
    return layout


def corrupt_chunks(node: NodeId, effects: list[Effect]) -> list[Effect]:
    """A byzantine contributor: the chunks it sends are not those it committed to."""
    out: list[Effect] = []
    for effect in effects:
        if isinstance(effect, Send) and isinstance(effect.message, RoundChunk):
            chunk = effect.message
            forged = RoundChunk(
                chunk.contract, chunk.round, chunk.attempt, chunk.index, bytes(len(chunk.data))
            )
            out.append(Send(effect.to, forged))
        else:
            out.append(effect)
    return out


def corrupt_partials(node: NodeId, effects: list[Effect]) -> list[Effect]:
    """A byzantine owner: the partial sums it sends are negative (no honest owner's can be)."""
    out: list[Effect] = []
    for effect in effects:
        if isinstance(effect, Send) and isinstance(effect.message, MergePartials):
            m = effect.message
            rows = (-np.frombuffer(m.rows, "<f8") - 1.0).tobytes()
            forged = MergePartials(m.contract, m.round, m.attempt, m.step, rows)
            out.append(Send(effect.to, forged))
        else:
            out.append(effect)
    return out


def _kill_one(context: SetupContext, rounds: int) -> None:
    """A participant dies at a random moment of a round and comes back two rounds later."""
    sim, rng = context.sim, context.faults
    victim = rng.choice(sim.node_ids)
    number = rng.randrange(1, rounds - 1)
    at = 1.0 + ROUND_EVERY_S * number + rng.uniform(0.0, 0.2)
    sim.loop.call_at(at, lambda: sim.crash(victim))
    sim.loop.call_at(at + 2 * ROUND_EVERY_S, lambda: _restart_if_down(sim, victim))
    context.notes.append(
        f"fault: {victim[:8]} crashes at {at:.3f} s (round {number + 1}), back 2 rounds later"
    )


def _restart_if_down(sim: Simulator, node: NodeId) -> None:
    """Bring ``node`` back, unless the end of the fault phase (which restarts every crashed
    node) already did."""
    if node not in sim.alive():
        sim.restart(node)


def _partition(context: SetupContext, rounds: int) -> None:
    sim, rng = context.sim, context.faults
    at = 1.0 + ROUND_EVERY_S + rng.uniform(0.0, 0.1)
    side = rng.sample(list(sim.node_ids), len(sim.node_ids) // 2)
    sim.loop.call_at(
        at, lambda: sim.network.partition(side, [n for n in sim.node_ids if n not in side])
    )
    sim.loop.call_at(at + 3.0, sim.network.heal)
    context.notes.append(f"fault: {len(side)} nodes cut off at {at:.3f} s for 3 s")


def _byzantine(context: SetupContext, partials: bool = False) -> None:
    sim = context.sim
    cheat = sim.node_ids[0]
    policy = corrupt_partials if partials else corrupt_chunks
    sim.set_policy(cheat, policy)
    sim.loop.call_at(context.fault_phase_s + 0.0005, lambda: sim.set_policy(cheat, policy))
    what = "partial sums that are negative" if partials else "chunks unlike its commitment"
    context.notes.append(f"byzantine: {cheat[:8]} sends {what}")


def rounds_scenario(
    name: str,
    description: str,
    nodes: int,
    rounds: int,
    fault: str = "",
    method: str = "mean",
    *,
    loss: float = 0.0,
    port_bps: float | None = None,
) -> Scenario:
    min_peers = max(2, nodes - 1) if fault else nodes

    def setup(context: SetupContext) -> None:
        swarm = _SWARMS[tuple(context.sim.node_ids)]
        for node in context.sim.node_ids:  # local clocks read block time: genesis + virtual
            context.sim.set_clock(node, offset_s=swarm.genesis.time_ms / 1000)
        contributions(context, rounds, min_peers, method)
        if fault == "kill":
            _kill_one(context, rounds)
        elif fault == "partition":
            _partition(context, rounds)
        elif fault in ("byzantine", "byzantine-partials"):
            _byzantine(context, partials=fault == "byzantine-partials")

    return scenario(
        Scenario(
            name=name,
            description=description,
            factory=lambda: build_node,
            checkers=lambda: [SameMergeChecker(), RoundsEndChecker(rounds, merge_all=not fault)],
            setup=setup,
            link=LinkConfig(
                latency_min_s=0.001, latency_tail_s=0.002, bandwidth_bps=100e6, loss=loss
            ),
            default_nodes=nodes,
            fault_phase_s=ROUND_EVERY_S * rounds,
            converge_budget_s=60.0,
            node_ids=node_ids,
            prepare=None if port_bps is None else _ports(port_bps),
        )
    )


def _ports(rate_bps: float) -> Callable[[Simulator], None]:
    """Every node behind an access link of ``rate_bps`` each way, shared by all its links."""

    def prepare(sim: Simulator) -> None:
        for node in sim.node_ids:
            sim.network.set_port(node, PortConfig(rate_bps, rate_bps))

    return prepare


rounds_scenario("rounds-3", "3 swarm nodes, 20 sync rounds", 3, 20)
rounds_scenario("rounds-10", "10 swarm nodes, 20 sync rounds", 10, 20)
rounds_scenario("rounds-50", "50 swarm nodes, 20 sync rounds", 50, 20)
rounds_scenario(
    "rounds-50-lossy",
    "50 swarm nodes, 5 sync rounds, 5% loss on every link, 100 Mbit/s ports",
    50,
    5,
    loss=0.05,
    port_bps=100e6,
)
rounds_scenario(
    "rounds-5-lossy",
    "5 swarm nodes, 5 sync rounds, 5% loss on every link (joins late: check-ins resent)",
    5,
    5,
    loss=0.05,
    port_bps=100e6,
)
rounds_scenario(
    "rounds-10-lossy",
    "10 swarm nodes, 5 sync rounds, 5% loss on every link, 100 Mbit/s ports",
    10,
    5,
    loss=0.05,
    port_bps=100e6,
)
rounds_scenario(
    "rounds-10-lossy-geomedian",
    "10 swarm nodes, 5 geometric-median rounds, 5% loss on every link, 100 Mbit/s ports",
    10,
    5,
    method="geomedian",
    loss=0.05,
    port_bps=100e6,
)
rounds_scenario("rounds-kill", "5 nodes; one dies mid-round and rejoins", 5, 6, "kill")
rounds_scenario("rounds-partition", "6 nodes; half cut off during an exchange", 6, 5, "partition")
rounds_scenario(
    "rounds-byzantine", "5 nodes; one sends chunks unlike its commitment", 5, 4, "byzantine"
)
for _method in ("coordmedian", "trimmedmean", "geomedian", "krum", "multikrum"):
    rounds_scenario(
        f"rounds-{_method}", f"5 nodes, 6 rounds merged with {_method}", 5, 6, "", _method
    )
rounds_scenario(
    "rounds-kill-geomedian",
    "5 nodes, geomedian; one dies mid-round (its partial sums never come) and rejoins",
    5,
    6,
    "kill",
    "geomedian",
)
rounds_scenario(
    "rounds-partition-krum",
    "6 nodes, multikrum; half cut off during an exchange",
    6,
    5,
    "partition",
    "multikrum",
)
rounds_scenario(
    "rounds-byzantine-partials",
    "5 nodes, geomedian; one owner sends negative partial sums",
    5,
    4,
    "byzantine-partials",
    "geomedian",
)
