"""Trainer sessions and the check-in lifecycle in the simulator (real consensus and keys),
each over a seed sweep (the seed moves the mishap's moment and the network's timing).

- restarted_trainer: a trainer's session closes at a random moment of a round (before it
  closes on the ledger, or mid-exchange) and a new session syncs other weights at once. A
  round's outcome goes only to the session whose check-in the ledger holds; the new session
  gets exactly one outcome, its own round's merge, bit-identical on every participant.
- wrong_min_peers, by syncTimeout: every trainer asks for more peers than the swarm has;
  each fails at its syncTimeout, round 1 is abandoned on the ledger, and a re-run with the
  right minPeers merges in round 2.
- wrong_min_peers, by closing: the same, the trainers stopped (sessions closed) instead.
- dead_node_expires: a node dies after checking in; its check-in expires on the ledger (block
  time) while another node waits, and the round is abandoned when the last trainer gives up.
- the named scenarios of :mod:`swarmlearn.roles.sl.simulation_sessions` (``sessions-restart``,
  ``sessions-minpeers``), with their checkers, over a sweep.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

import swarmlearn.roles.sl.simulation_sessions  # noqa: F401  (registers the sessions-* scenarios)
import tests.test_round_liveness as liveness
from swarmlearn.consensus.ledger.app import DEFAULT_CONTRACT, SwarmApp
from swarmlearn.consensus.ledger.rounds import ABANDONED, RoundStatus
from swarmlearn.merge import ModelState, flatten, layout_of, merge
from swarmlearn.merge.manifest import Layout
from swarmlearn.roles.sl.core import Contribute, RoundDone, RoundFailed, SessionClosed
from swarmlearn.sim import Simulator
from swarmlearn.sim.scenarios import run_scenario
from swarmlearn.sim.testing import sweep
from tests.test_rounds_sim import CHUNK_BYTES, Swarm, make_swarm, model, start_simulator

pytestmark = pytest.mark.sim

SEEDS = range(8)


class Heard(liveness.Heard):
    """What each node delivered to its trainers (any session), with the virtual time."""

    def ends(self, node: str | None = None) -> list[tuple[str, float, RoundDone | RoundFailed]]:
        return [
            v
            for v in self.values
            if isinstance(v[2], RoundDone | RoundFailed) and node in (None, v[0])
        ]

    def done(self, session: int) -> list[RoundDone]:
        return [v for _, _, v in self.values if isinstance(v, RoundDone) and v.session == session]


@pytest.fixture(scope="module")
def swarm3(tmp_path_factory: pytest.TempPathFactory) -> Swarm:
    return make_swarm(tmp_path_factory.mktemp("sessions"), 3)


@pytest.fixture(scope="module")
def swarm4(tmp_path_factory: pytest.TempPathFactory) -> Swarm:
    """Four validators: the ledger goes on when one dies."""
    return make_swarm(tmp_path_factory.mktemp("sessions4"), 4)


def contribution(
    layout: Layout,
    state: ModelState,
    node: str,
    session: int,
    min_peers: int,
    wait_s: float | None = None,
) -> Contribute:
    flat = bytes(flatten(state, layout))
    weight = random.Random(node).randint(1, 100)
    return Contribute(
        DEFAULT_CONTRACT, flat, layout, weight, min_peers, wait_s=wait_s, session=session
    )


def app_of(sim: Simulator, node: str) -> SwarmApp:
    app = sim.nodes[node].core.app  # type: ignore[union-attr]
    assert isinstance(app, SwarmApp)
    return app


def expected_merge(layout: Layout, states: dict[str, ModelState]) -> bytes:
    nodes = sorted(states)
    weights = [random.Random(node).randint(1, 100) for node in nodes]
    return bytes(flatten(merge([states[n] for n in nodes], weights, "mean"), layout))


def outcomes_match_ledger_sessions(sim: Simulator, heard: Heard, seed: int) -> None:
    """Each outcome a node delivers is addressed to the session of its check-in there."""
    for node, _, value in heard.ends():
        record = app_of(sim, node).state.contracts[DEFAULT_CONTRACT].rounds.get(value.round)
        if record is not None and node in record.checkins:
            held = record.checkins[node].session
            assert value.session == held, f"seed {seed}: round {value.round} to {value.session}"


@pytest.mark.parametrize("seed", SEEDS)
def test_restarted_trainer_hears_only_its_own_round(swarm3: Swarm, seed: int) -> None:
    heard = Heard()
    sim = start_simulator(swarm3, seed, heard)
    rng, faults = np.random.default_rng(seed), random.Random(seed)
    restarted, *others = sim.node_ids
    layout = layout_of(model(rng), chunk_bytes=CHUNK_BYTES)
    first = {node: model(rng) for node in sim.node_ids}
    for index, node in enumerate(sim.node_ids):
        session = 10 * index + 1
        sim.request(node, contribution(layout, first[node], node, session, 3), at=1.0)
    closed_at = 1.0 + faults.uniform(0.0, 1.2)  # the round's check-ins, grace or exchange
    sim.request(restarted, SessionClosed(1), at=closed_at)
    again = model(rng)
    sim.request(restarted, contribution(layout, again, restarted, 2, 3), at=closed_at + 0.05)
    second = {node: model(rng) for node in others}
    for index, node in enumerate(others, start=1):
        sim.request(node, contribution(layout, second[node], node, 10 * index + 2, 3), at=8.0)
    sim.run(until=lambda: bool(heard.done(2)) or bool(sim.violations), time_limit=60)
    sim.run(until=lambda: False, time_limit=sim.loop.now + 10)  # anything else it would say
    assert not sim.violations, sim.violations
    (mine,) = heard.done(2)  # exactly one outcome for the new session, a merge
    assert [v for _, _, v in heard.ends() if v.session == 2] == [mine]
    outcomes_match_ledger_sessions(sim, heard, seed)
    ledger = app_of(sim, others[0]).state.contracts[DEFAULT_CONTRACT]
    assert ledger.rounds[mine.round].merged_root == mine.root
    if mine.round == 1:  # the new session's check-in replaced the old one before the close
        expected = expected_merge(layout, {**first, restarted: again})
    else:  # round 1 closed with the old session's weights; the new ones went to round 2
        assert mine.round == 2
        expected = expected_merge(layout, {**second, restarted: again})
    assert bytes(mine.flat) == expected, f"seed {seed}"
    for _, _, value in heard.ends():  # every participant of the round holds the same bytes
        if isinstance(value, RoundDone) and value.round == mine.round:
            assert bytes(value.flat) == expected


@pytest.mark.parametrize("by", ["sync_timeout", "closing"])
@pytest.mark.parametrize("seed", SEEDS[:4])
def test_wrong_min_peers_then_rerun(swarm3: Swarm, seed: int, by: str) -> None:
    heard = Heard()
    sim = start_simulator(swarm3, seed, heard)
    rng, jitter = np.random.default_rng(seed), random.Random(seed)
    layout = layout_of(model(rng), chunk_bytes=CHUNK_BYTES)
    wait_s = 20.0 if by == "sync_timeout" else None
    starts = {node: 1.0 + jitter.uniform(0.0, 2.0) for node in sim.node_ids}
    for index, node in enumerate(sim.node_ids):
        request = contribution(layout, model(rng), node, 10 * index + 1, 4, wait_s)
        sim.request(node, request, at=starts[node])
        if by == "closing":
            sim.request(node, SessionClosed(10 * index + 1), at=8.0 + jitter.uniform(0.0, 2.0))
    sim.run(until=lambda: False, time_limit=30.0)
    for node in sim.node_ids:
        record = app_of(sim, node).state.contracts[DEFAULT_CONTRACT].rounds[1]
        assert (record.status, record.reason) == (RoundStatus.FAILED, ABANDONED), f"seed {seed}"
    if by == "sync_timeout":  # each trainer heard why, at its syncTimeout
        ends = heard.ends()
        assert sorted(node for node, _, _ in ends) == sorted(sim.node_ids)
        for node, at, value in ends:
            assert isinstance(value, RoundFailed)
            assert "fewer than minPeers=4" in value.reason
            assert starts[node] + 20.0 <= at < starts[node] + 21.0
    states = {node: model(rng) for node in sim.node_ids}
    for index, node in enumerate(sim.node_ids):
        sim.request(node, contribution(layout, states[node], node, 10 * index + 2, 3), at=31.0)
    sim.run(until=lambda: len(heard.done(2) + heard.done(12) + heard.done(22)) == 3, time_limit=90)
    done = heard.done(2) + heard.done(12) + heard.done(22)
    assert {v.round for v in done} == {2}, f"seed {seed}"
    assert {bytes(v.flat) for v in done} == {expected_merge(layout, states)}


@pytest.mark.parametrize("seed", SEEDS[:4])
def test_a_dead_nodes_check_in_expires_and_the_round_is_abandoned(swarm4: Swarm, seed: int) -> None:
    heard = Heard()
    sim = start_simulator(swarm4, seed, heard)
    rng, jitter = np.random.default_rng(seed), random.Random(seed)
    dead, waiting, late, _ = sim.node_ids
    layout = layout_of(model(rng), chunk_bytes=CHUNK_BYTES)
    sim.request(dead, contribution(layout, model(rng), dead, 1, 4, wait_s=10.0), at=1.0)
    sim.loop.call_at(2.0 + jitter.uniform(0.0, 1.0), lambda: sim.crash(dead))
    sim.request(waiting, contribution(layout, model(rng), waiting, 2, 4, wait_s=60.0), at=1.5)
    ledger = app_of(sim, waiting).state.contracts[DEFAULT_CONTRACT]

    def in_round() -> set[str]:
        return set(ledger.rounds[1].checkins) if 1 in ledger.rounds else set()

    sim.run(until=lambda: in_round() == {dead, waiting}, time_limit=5.0)
    assert in_round() == {dead, waiting}, f"seed {seed}"
    # No one sends the dead node's CheckOut: its check-in leaves at its wait, in block time
    # (the waiting node's next progress beat makes that block).
    sim.run(until=lambda: in_round() == {waiting}, time_limit=40.0)
    assert in_round() == {waiting}, f"seed {seed}"
    assert ledger.rounds[1].status == RoundStatus.OPEN
    sim.run(until=lambda: ledger.rounds[1].finished, time_limit=70.0)
    assert (ledger.rounds[1].status, ledger.rounds[1].reason) == (RoundStatus.FAILED, ABANDONED)
    ((node, at, failed),) = heard.ends(waiting)
    assert isinstance(failed, RoundFailed)
    assert 61.5 <= at < 62.5
    states = {waiting: model(rng), late: model(rng)}
    for node, session in ((waiting, 3), (late, 4)):
        start = max(at, sim.loop.now) + 1.0  # (the ledger may record the end after the node)
        sim.request(node, contribution(layout, states[node], node, session, 2), at=start)
    sim.run(until=lambda: len(heard.done(3) + heard.done(4)) == 2, time_limit=at + 30)
    done = heard.done(3) + heard.done(4)
    assert {(v.round, bytes(v.flat)) for v in done} == {(2, expected_merge(layout, states))}


def test_a_sync_queued_behind_a_running_round_ends_at_its_sync_timeout(swarm3: Swarm) -> None:
    """syncTimeout counts from the sync's start, also while its weights wait in the queue."""
    heard = Heard()
    sim = start_simulator(swarm3, 0, heard)
    rng = np.random.default_rng(0)
    node = sim.node_ids[0]
    layout = layout_of(model(rng), chunk_bytes=CHUNK_BYTES)
    sim.request(node, contribution(layout, model(rng), node, 1, 3), at=1.0)  # waits for peers
    sim.request(node, contribution(layout, model(rng), node, 2, 3, wait_s=5.0), at=2.0)
    sim.run(until=lambda: bool(heard.ends()), time_limit=30.0)
    ((_, at, failed),) = heard.ends()
    assert isinstance(failed, RoundFailed)
    assert failed.session == 2
    assert 7.0 <= at < 7.1
    assert failed.reason.startswith("still queued behind round 1 at syncTimeout=5 s")


@pytest.mark.parametrize("name", ["sessions-restart", "sessions-minpeers"])
def test_the_named_session_scenarios_over_a_seed_sweep(
    name: str, request: pytest.FixtureRequest
) -> None:
    """``python -m swarmlearn.sim --scenario sessions-restart --seed N`` replays any of them."""
    count = request.config.getoption("--sim-seeds") or 10  # make check: 5
    results = sweep(name, range(count))
    assert len({r.fingerprint for r in results}) == count
    assert run_scenario(name, 0).fingerprint == results[0].fingerprint  # one seed, one run
