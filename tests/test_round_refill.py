"""A re-planned round survives a node dying mid exchange, with the merge in the trainers'
handover files (roles/sl/refill.py, in the simulator).

Each node's contribution is a writable view of a shared mapping (its trainer's handover
file), so merged pieces land over the node's own weights. An owner dies after some of its
merged pieces landed: the ledger re-plans the round with the survivors, each asks its trainer
to write its weights into the file again (``NeedRefill``), checks them against its commitment
(``Refilled``) and joins the new attempt; all survivors end with the same merge, the one the
ledger holds. A trainer that hands back other bytes fails its round, and says which chunk.
"""

from __future__ import annotations

import mmap
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from swarmlearn.consensus.ledger.app import DEFAULT_CONTRACT
from swarmlearn.merge import flatten, layout_of, merge, unpack
from swarmlearn.merge.manifest import Layout
from swarmlearn.roles.sl.core import (
    Contribute,
    MergedPiece,
    NeedRefill,
    Refilled,
    RoundDone,
    RoundFailed,
)
from swarmlearn.sansio import Deliver, Effect, NodeId, Send
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

MIN_PEERS = 3


@pytest.fixture(scope="module")
def swarm4(tmp_path_factory: pytest.TempPathFactory) -> Swarm:
    return make_swarm(tmp_path_factory.mktemp("refill"), 4)


def simulator(swarm: Swarm, checker: RoundChecker) -> Simulator:
    return start_simulator(swarm, 3, checker)


def weight_of(node: NodeId) -> int:
    return random.Random(node).randint(1, 100)


def hand_over(sim: Simulator, layout: Layout, flats: dict[NodeId, bytes]) -> dict[str, mmap.mmap]:
    """Each node's weights in a shared mapping of its own, handed over as a view of it, by a
    trainer that can refill them."""
    files = {}
    for node, flat in sorted(flats.items()):
        files[node] = mmap.mmap(-1, layout.total_bytes)
        files[node][:] = flat
        view = memoryview(files[node])
        contribution = Contribute(
            DEFAULT_CONTRACT, view, layout, weight_of(node), MIN_PEERS, refill=True
        )
        sim.request(node, contribution, at=1.0)
    return files


def trainer(
    sim: Simulator, files: dict[str, mmap.mmap], flats: dict[NodeId, bytes], asked: list[NodeId]
) -> Callable[[NodeId, list[Effect]], list[Effect]]:
    """The trainers' side: asked to refill, write the node's weights (``flats``) again."""

    def answer(node: NodeId, effects: list[Effect]) -> list[Effect]:
        for effect in effects:
            if isinstance(effect, Deliver) and isinstance(effect.value, NeedRefill):
                asked.append(node)
                if not flats[node]:
                    continue  # a trainer that never answers
                files[node][:] = flats[node]
                refilled = Refilled(effect.value.contract, effect.value.round, True)
                sim.request(node, refilled, at=sim.loop.now + 0.001)
        return effects

    return answer


def dies_after_first_piece(sim: Simulator, victim: NodeId) -> Callable[..., list[Effect]]:
    """The victim sends one merged piece (it lands in one peer's file), then dies."""

    def policy(node: NodeId, effects: list[Effect]) -> list[Effect]:
        kept: list[Effect] = []
        for effect in effects:
            if isinstance(effect, Send) and isinstance(effect.message, MergedPiece):
                kept.append(effect)
                sim.loop.call_later(0.0, lambda: sim.crash(victim))
                return kept
            kept.append(effect)
        return kept

    return policy


@dataclass
class Run:
    sim: Simulator
    checker: RoundChecker
    files: dict[str, mmap.mmap]
    flats: dict[NodeId, bytes]
    survivors: list[NodeId]
    asked: list[NodeId]
    layout: Layout


NodePolicy = Callable[[NodeId, list[Effect]], list[Effect]]


def run_round_with_a_death(
    swarm: Swarm,
    refill_of: Callable[[NodeId, bytes], bytes],
    wrap: Callable[[Simulator, NodePolicy], NodePolicy] = lambda sim, policy: policy,
) -> Run:
    """Round 1 on 4 nodes; one owner dies after its first merged piece went out. A trainer
    asked to refill writes ``refill_of(node, its weights)`` (``b""``: it never answers).
    ``wrap`` puts a watcher around each node's policy."""
    checker = RoundChecker()
    sim = simulator(swarm, checker)
    rng = np.random.default_rng(11)
    layout = layout_of(model(rng), chunk_bytes=CHUNK_BYTES)
    flats = {node: bytes(flatten(model(rng), layout)) for node in sim.node_ids}
    files = hand_over(sim, layout, flats)
    victim = sim.node_ids[1]
    survivors = [n for n in sim.node_ids if n != victim]
    asked: list[NodeId] = []
    refills = {node: refill_of(node, flats[node]) for node in survivors}
    for node in survivors:
        sim.set_policy(node, wrap(sim, trainer(sim, files, refills, asked)))
    sim.set_policy(victim, wrap(sim, dies_after_first_piece(sim, victim)))

    def over() -> bool:
        ends = len(checker.done.get((DEFAULT_CONTRACT, 1), {})) + len(checker.failed)
        return ends == len(survivors) or bool(sim.violations)

    sim.run(until=over, time_limit=120)
    assert not sim.violations, sim.violations
    assert not sim.nodes[victim].alive
    return Run(sim, checker, files, flats, survivors, asked, layout)


def test_survivors_refill_their_files_and_finish_the_round(swarm4: Swarm) -> None:
    run = run_round_with_a_death(swarm4, lambda node, flat: flat)
    assert run.checker.failed == []
    # Every survivor had merged bytes over its weights (its own range, at least) when the
    # re-planned attempt came: each was asked to refill, once.
    assert sorted(run.asked) == sorted(run.survivors)
    done: dict[str, RoundDone] = run.checker.done[(DEFAULT_CONTRACT, 1)]
    assert sorted(done) == sorted(run.survivors)
    assert len({o.root for o in done.values()}) == 1
    app = run.sim.nodes[run.survivors[0]].core.app  # type: ignore[union-attr]
    record = app.state.contracts[DEFAULT_CONTRACT].rounds[1]
    assert record.merged_root == next(iter(done.values())).root  # the ledger holds it
    assert record.attempt >= 1
    assert list(record.participants) == sorted(run.survivors)
    weights = [weight_of(n) for n in record.participants]
    states = [unpack(run.flats[n], run.layout) for n in record.participants]
    expected = bytes(flatten(merge(states, weights, "mean"), run.layout))
    for node, outcome in done.items():
        assert isinstance(outcome.flat, memoryview)
        assert outcome.flat.obj is run.files[node]
        assert run.files[node][:] == expected  # bit for bit the survivors' reference merge


def test_a_trainer_that_refills_other_bytes_fails_its_round(swarm4: Swarm) -> None:
    liar = None

    def refill_of(node: NodeId, flat: bytes) -> bytes:
        nonlocal liar
        if liar is not None:
            return flat
        liar = node
        return flat[:-1] + bytes([flat[-1] ^ 1])  # one bit off, in the last chunk

    run = run_round_with_a_death(swarm4, refill_of)
    failed: list[RoundFailed] = run.checker.failed
    lied = [f for f in failed if "not the committed ones" in f.reason]
    assert len(lied) == 1, failed
    chunks = run.layout.chunk_count
    assert f"chunk {chunks - 1} of {chunks} differs" in lied[0].reason
    assert lied[0].overwritten  # its file holds no one's weights: the trainer keeps its own
    assert liar not in run.checker.done.get((DEFAULT_CONTRACT, 1), {})


def test_a_trainer_that_never_refills_fails_its_round_at_the_deadline(swarm4: Swarm) -> None:
    silent: list[NodeId] = []

    def refill_of(node: NodeId, flat: bytes) -> bytes:
        if silent:
            return flat
        silent.append(node)
        return b""

    run = run_round_with_a_death(swarm4, refill_of)
    late = [f for f in run.checker.failed if "did not refill its weights by" in f.reason]
    assert len(late) == 1, run.checker.failed
    assert silent[0] not in run.checker.done.get((DEFAULT_CONTRACT, 1), {})
