"""Trainer sessions in the simulator: named scenarios for ``python -m swarmlearn.sim``.

The same whole swarm nodes as :mod:`swarmlearn.roles.sl.simulation` (ledger + SL, real
certificates from the seed); the workload speaks as trainer sessions do. Scenarios:

- ``sessions-restart``: rounds every ``ROUND_EVERY_S``; in a random round one node's trainer
  session closes at a random moment (before the round closes, in its grace period or mid
  exchange) and a new session syncs other weights 50 ms later, then in every later round.
- ``sessions-minpeers``: every trainer asks for one peer more than the swarm has; half of
  them are stopped (their sessions close), the others wait their syncTimeout; then all re-run
  with the right minPeers.

Checkers, beside the rounds' own (every participant ends with the same bytes, the ledger's
root): every outcome a node delivers is addressed to the session whose check-in the ledger
holds for it (a restarted trainer never hears its earlier run's round); every session that
stays hears the outcome of its last sync; no open round is left behind.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from swarmlearn.consensus.ledger.app import DEFAULT_CONTRACT
from swarmlearn.consensus.ledger.rounds import RoundStatus
from swarmlearn.merge import flatten, layout_of
from swarmlearn.merge.manifest import Layout
from swarmlearn.roles.sl.core import Contribute, RoundDone, RoundFailed, SessionClosed
from swarmlearn.roles.sl.simulation import (
    _SWARMS,
    ROUND_EVERY_S,
    SameMergeChecker,
    _any_app,
    _model,
    build_node,
    node_ids,
)
from swarmlearn.sansio import NodeId
from swarmlearn.sim.checkers import Checker, FailureKind, Violation
from swarmlearn.sim.cluster import Simulator
from swarmlearn.sim.network import LinkConfig
from swarmlearn.sim.scenarios import Scenario, SetupContext, scenario

NODES = 4
ROUNDS = 4
SYNC_TIMEOUT_S = 12.0


class SessionChecker(Checker):
    """Outcomes go to the session the ledger's check-in names; the sessions that stay hear
    their last sync's outcome; no round is left open."""

    name = "sessions"

    def __init__(self) -> None:
        self.ends: list[tuple[NodeId, float, RoundDone | RoundFailed]] = []
        self.waiting: dict[int, NodeId] = {}  # session -> node, whose last sync has no outcome

    def expect(self, node: NodeId, session: int) -> None:
        self.waiting[session] = node

    def forget(self, session: int) -> None:
        self.waiting.pop(session, None)

    def on_deliver(self, node: NodeId, incarnation: int, value: Any, time: float) -> None:
        if isinstance(value, RoundDone | RoundFailed):
            self.ends.append((node, time, value))
            self.waiting.pop(value.session, None)

    def converged(self, sim: Simulator) -> bool:
        app = _any_app(sim)
        records = app.state.contracts[DEFAULT_CONTRACT].rounds.values() if app else ()
        return not self.waiting and all(r.finished for r in records)

    def final(self, sim: Simulator) -> list[Violation]:
        app = _any_app(sim)
        rounds = app.state.contracts[DEFAULT_CONTRACT].rounds if app else {}
        wrong = [
            f"round {v.round} of {node[:8]} went to session {v.session}"
            for node, _, v in self.ends
            if v.round in rounds
            and node in rounds[v.round].checkins
            and rounds[v.round].checkins[node].session != v.session
        ]
        if self.waiting:
            wrong.append(f"sessions {sorted(self.waiting)} never heard their last sync's outcome")
        if any(r.status == RoundStatus.OPEN for r in rounds.values()):
            wrong.append("a round is still open")
        return [Violation(self.name, FailureKind.LIVENESS, w, sim.now) for w in wrong]

    def progress(self, sim: Simulator) -> str:
        return f"sessions waiting: {sorted(self.waiting)}"


def _checker(context: SetupContext) -> SessionChecker:
    found = [c for c in context.sim.checkers if isinstance(c, SessionChecker)]
    assert found, "the scenario's checkers include a SessionChecker"
    return found[0]


def _sync(
    context: SetupContext,
    layout: Layout,
    node: NodeId,
    session: int,
    at: float,
    min_peers: int,
    wait_s: float | None = None,
) -> None:
    rng = np.random.default_rng(context.workload.getrandbits(32))
    flat = bytes(flatten(_model(rng), layout))
    weight = random.Random(node).randint(1, 100)
    contribution = Contribute(
        DEFAULT_CONTRACT, flat, layout, weight, min_peers, wait_s=wait_s, session=session
    )
    checker = _checker(context)

    def sync() -> None:
        checker.expect(node, session)
        context.sim.request(node, contribution)

    context.sim.loop.call_at(at, sync)


def _close(context: SetupContext, node: NodeId, session: int, at: float) -> None:
    checker = _checker(context)

    def close() -> None:
        checker.forget(session)
        context.sim.request(node, SessionClosed(session))

    context.sim.loop.call_at(at, close)


def _start(context: SetupContext) -> Layout:
    swarm = _SWARMS[tuple(context.sim.node_ids)]
    for node in context.sim.node_ids:  # local clocks read block time: genesis + virtual
        context.sim.set_clock(node, offset_s=swarm.genesis.time_ms / 1000)
    rng = np.random.default_rng(context.workload.getrandbits(32))
    return layout_of(_model(rng), chunk_bytes=2048)


def _restart(context: SetupContext) -> None:
    layout = _start(context)
    nodes, faults = context.sim.node_ids, context.faults
    victim, restart_round = faults.choice(nodes), faults.randrange(ROUNDS - 1)
    closed_at = 1.0 + ROUND_EVERY_S * restart_round + faults.uniform(0.0, 1.5)
    quorum = len(nodes) - 1  # the rounds go on while the victim's trainer is away
    for number in range(ROUNDS):
        at = 1.0 + ROUND_EVERY_S * number
        for index, node in enumerate(nodes):
            if node != victim or number <= restart_round:
                _sync(context, layout, node, 100 * (index + 1), at, quorum)
    old = 100 * (nodes.index(victim) + 1)
    _close(context, victim, old, closed_at)
    _sync(context, layout, victim, 10_000, closed_at + 0.05, quorum)  # the restarted script
    context.notes.append(
        f"fault: {victim[:8]}'s session {old} closes at {closed_at:.3f} s (round"
        f" {restart_round + 1}); a new session syncs 50 ms later"
    )


def _wrong_min_peers(context: SetupContext) -> None:
    layout = _start(context)
    nodes, faults = context.sim.node_ids, context.faults
    stopped = set(faults.sample(nodes, len(nodes) // 2))
    for index, node in enumerate(nodes):
        first = faults.uniform(1.0, 2.0)
        wait_s = None if node in stopped else SYNC_TIMEOUT_S
        _sync(context, layout, node, 10 * index + 1, first, len(nodes) + 1, wait_s)
        if node in stopped:
            _close(context, node, 10 * index + 1, first + faults.uniform(2.0, 6.0))
    rerun_at = 2.0 + SYNC_TIMEOUT_S + 1.0
    for index, node in enumerate(nodes):
        _sync(context, layout, node, 10 * index + 2, rerun_at, len(nodes))
    context.notes.append(
        f"minPeers={len(nodes) + 1}; {len(stopped)} trainers stopped, the rest time out;"
        f" the re-run at {rerun_at:g} s asks minPeers={len(nodes)}"
    )


def _sessions_scenario(name: str, description: str, setup: Any, fault_phase_s: float) -> None:
    scenario(
        Scenario(
            name=name,
            description=description,
            factory=lambda: build_node,
            checkers=lambda: [SameMergeChecker(), SessionChecker()],
            setup=setup,
            link=LinkConfig(latency_min_s=0.001, latency_tail_s=0.002, bandwidth_bps=100e6),
            default_nodes=NODES,
            fault_phase_s=fault_phase_s,
            converge_budget_s=60.0,
            node_ids=node_ids,
        )
    )


_sessions_scenario(
    "sessions-restart",
    "4 nodes; a trainer restarted mid-round syncs other weights at once",
    _restart,
    ROUND_EVERY_S * (ROUNDS + 1),
)
_sessions_scenario(
    "sessions-minpeers",
    "4 nodes ask minPeers=5, are stopped or time out, re-run with minPeers=4",
    _wrong_min_peers,
    SYNC_TIMEOUT_S + 4.0,
)
