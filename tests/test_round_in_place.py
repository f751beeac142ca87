"""The merged model assembled in the trainer's handover file (roles/sl/core.py, in the simulator).

Each node's contribution is a writable view of a shared mapping, as the node gets it from
its trainer's handover file: the round writes the merged model into that same mapping (no
second model in the node). A round that fails after merged bytes were written there says so
(``overwritten``), and the next round, with fresh weights, merges cleanly.
"""

from __future__ import annotations

import functools
import mmap
import random
from typing import Any

import numpy as np
import pytest

from swarmlearn.consensus.ledger.app import DEFAULT_CONTRACT
from swarmlearn.merge import ModelState, flatten, layout_of, merge
from swarmlearn.merge.manifest import Layout
from swarmlearn.merge.plan import plan_shards
from swarmlearn.roles.sl.core import Contribute, MergedPiece, RoundChunk, RoundDone, RoundFailed
from swarmlearn.sansio import Effect, NodeId, Send
from swarmlearn.sim import Simulator
from tests.test_rounds_sim import (
    CHUNK_BYTES,
    RoundChecker,
    Swarm,
    make_swarm,
    model,
    start_simulator,
)

pytestmark = pytest.mark.sim


@pytest.fixture(scope="module")
def swarm3(tmp_path_factory: pytest.TempPathFactory) -> Swarm:
    return make_swarm(tmp_path_factory.mktemp("in-place"), 3)


def simulator(swarm: Swarm, checker: RoundChecker) -> Simulator:
    return start_simulator(swarm, 1, checker)


def hand_over(
    sim: Simulator, layout: Layout, states: dict[str, ModelState], at: float, refill: bool = False
) -> dict[str, mmap.mmap]:
    """Each node's weights in a shared mapping of their own, handed over as a view of it."""
    files = {}
    for node, state in sorted(states.items()):
        files[node] = mmap.mmap(-1, layout.total_bytes)
        files[node][:] = bytes(flatten(state, layout))
        weight = random.Random(node).randint(1, 100)
        flat = memoryview(files[node])
        contribution = Contribute(
            DEFAULT_CONTRACT, flat, layout, weight, len(states), refill=refill
        )
        sim.request(node, contribution, at=at)
    return files


def reference(layout: Layout, states: dict[str, ModelState]) -> bytes:
    nodes = sorted(states)
    weights = [random.Random(node).randint(1, 100) for node in nodes]
    return bytes(flatten(merge([states[n] for n in nodes], weights, "mean"), layout))


def outcomes(checker: RoundChecker, number: int) -> dict[str, Any]:
    return checker.done.get((DEFAULT_CONTRACT, number), {})


@pytest.mark.parametrize("refill", [False, True])
def test_the_merged_model_is_assembled_in_each_trainers_file(swarm3: Swarm, refill: bool) -> None:
    """With a trainer that can refill (``refill``), each owner also merges its own range in
    place in its file (its own chunks copied just before a fold writes over them)."""
    checker = RoundChecker()
    sim = simulator(swarm3, checker)
    rng = np.random.default_rng(7)
    layout = layout_of(model(rng), chunk_bytes=CHUNK_BYTES)
    states = {node: model(rng) for node in sim.node_ids}
    files = hand_over(sim, layout, states, at=1.0, refill=refill)
    sent: list[tuple[NodeId, RoundChunk]] = []

    def watch(node: NodeId, effects: list[Effect]) -> list[Effect]:
        for effect in effects:
            if isinstance(effect, Send) and isinstance(effect.message, RoundChunk):
                sent.append((node, effect.message))
        return effects

    for node in sim.node_ids:
        sim.set_policy(node, watch)
    sim.run(until=lambda: len(outcomes(checker, 1)) == 3 or bool(sim.violations), time_limit=60)
    assert not sim.violations, sim.violations
    # Chunks go as views of the file (no copy), except those that straddle two owners'
    # ranges: a merged piece from one owner lands on part of them while the other may
    # still be sending them (a real lane writes the view later).
    plan = plan_shards(layout, 3)
    straddling = {c for c in range(layout.chunk_count) if len(plan.owners_of_chunk(c)) > 1}
    assert straddling, "the test needs chunks at range boundaries"
    for node, chunk in sent:
        in_file = isinstance(chunk.data, memoryview) and chunk.data.obj is files[node]
        assert in_file == (chunk.index not in straddling), (node, chunk.index)
    expected = reference(layout, states)
    done: dict[str, RoundDone] = outcomes(checker, 1)
    assert sorted(done) == sorted(files)
    for node, outcome in done.items():
        assert isinstance(outcome.flat, memoryview)
        assert outcome.flat.obj is files[node]  # delivered where the trainer reads it
        assert files[node][:] == expected  # bit for bit the reference merge
    for node in sim.node_ids:  # and the node let go of the file: it keeps no view of it
        core = sim.nodes[node].core.sl  # type: ignore[union-attr]
        assert core.kept.kept == {}  # every participant agreed: no one will fetch it
        for state in core.rounds.values():
            assert (state.merged, state.attempt, state.contribution.flat) == (None, None, b"")


def silent_merger(node: NodeId, effects: list[Effect]) -> list[Effect]:
    """A participant whose merged pieces never leave it."""
    return [e for e in effects if not (isinstance(e, Send) and isinstance(e.message, MergedPiece))]


def test_a_round_failing_after_the_file_was_merged_into_says_so(swarm3: Swarm) -> None:
    checker = RoundChecker()
    sim = simulator(swarm3, checker)
    rng = np.random.default_rng(8)
    layout = layout_of(model(rng), chunk_bytes=CHUNK_BYTES)
    quiet = sim.node_ids[0]
    sim.set_policy(quiet, silent_merger)
    states = {node: model(rng) for node in sim.node_ids}
    files = hand_over(sim, layout, states, at=1.0)
    sim.run(until=lambda: len(checker.failed) == 3 or bool(sim.violations), time_limit=120)
    assert not sim.violations, sim.violations
    failed: list[RoundFailed] = checker.failed
    assert sorted(f.round for f in failed) == [1, 1, 1]
    # Every node had merged bytes written into its file when the next attempt came: none
    # has its weights any more, so each sits it out and tells its trainer so.
    assert all(f.overwritten and "partial merge" in f.reason for f in failed), failed
    sim.set_policy(quiet, None)
    # The trainers go on at once with fresh weights: round 2 merges cleanly; so does round 3,
    # handed over after round 1's deadline (attempt 2: 10 s), whose first block fails round 1.
    for number, after_s in ((2, 0.5), (3, 12.0)):
        states = {node: model(rng) for node in sim.node_ids}
        files = hand_over(sim, layout, states, at=sim.loop.now + after_s)
        until = functools.partial(lambda n: len(outcomes(checker, n)) == 3, number)
        sim.run(until=until, time_limit=sim.loop.now + 60)
        expected = reference(layout, states)
        assert sorted(outcomes(checker, number)) == sorted(files)
        assert all(files[node][:] == expected for node in files)
    app = sim.nodes[quiet].core.app  # type: ignore[union-attr]
    assert app.state.contracts[DEFAULT_CONTRACT].rounds[1].status == "failed"
