"""A participant that missed a round's merge fetches the merged model from the others at
once, past a source that lies (roles/sl/fetch.py, in the simulator).

Three whole swarm nodes (ledger + SL) run a round; no merged piece of the attempt reaches
the first node (every one sent to it is lost, the repair's resends too), so it never
assembles the model. At the attempt's deadline the ledger finishes the round with the two
that agree, and the first node fetches the model from both at once. One of them flips a bit
in every chunk it serves: its first chunk gets it dropped for good, its share is asked of
the other, and the node ends with the others' bytes, bit for bit.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from swarmlearn.consensus.ledger.app import DEFAULT_CONTRACT
from swarmlearn.merge import flatten, layout_of
from swarmlearn.roles.sl.core import Contribute, MergedPiece
from swarmlearn.roles.sl.messages import FetchMerged
from swarmlearn.sansio import Effect, Log, NodeId, Send
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
    return make_swarm(tmp_path_factory.mktemp("fetch"), 3)


@pytest.mark.parametrize("seed", [31, 32, 33])
def test_a_node_that_missed_the_merge_fetches_it_past_a_lying_source(
    swarm3: Swarm, seed: int
) -> None:
    checker = RoundChecker()
    sim = start_simulator(swarm3, seed, checker)
    victim, liar, honest = sorted(swarm3.identities)
    rng = np.random.default_rng(seed)
    layout = layout_of(model(rng), chunk_bytes=CHUNK_BYTES)
    logs: list[str] = []
    asked: dict[NodeId, set[int]] = {liar: set(), honest: set()}

    def lose_pieces(node: NodeId, effects: list[Effect]) -> list[Effect]:
        out: list[Effect] = []
        for effect in effects:
            message = effect.message if isinstance(effect, Send) else None
            if isinstance(message, MergedPiece) and isinstance(effect, Send):
                if message.attempt >= 0 and effect.to == victim:
                    continue  # lost on the way
                if message.attempt == -1 and node == liar:
                    data = bytearray(message.data)
                    data[0] ^= 1
                    effect = Send(effect.to, replace(message, data=bytes(data)))
            out.append(effect)
        return out

    def watch(node: NodeId, effects: list[Effect]) -> list[Effect]:
        for effect in effects:
            if isinstance(effect, Log):
                logs.append(effect.text)
            if isinstance(effect, Send) and isinstance(effect.message, FetchMerged):
                asked[effect.to] |= set(effect.message.indexes)
        return effects

    sim.set_policy(liar, lose_pieces)
    sim.set_policy(honest, lose_pieces)
    sim.set_policy(victim, watch)
    for node in sorted(swarm3.identities):  # minPeers 2: the two that agree finish it
        flat = bytes(flatten(model(rng), layout))
        sim.request(node, Contribute(DEFAULT_CONTRACT, flat, layout, 1, 2), at=1.0)
    sim.run(
        until=lambda: (
            bool(sim.violations)
            or bool(checker.failed)
            or len(checker.done.get((DEFAULT_CONTRACT, 1), {})) == 3
        ),
        time_limit=120.0,
    )
    assert not sim.violations, sim.violations
    assert not checker.failed, checker.failed
    done = checker.done[(DEFAULT_CONTRACT, 1)]
    assert len(done) == 3
    assert len({bytes(d.flat) for d in done.values()}) == 1  # bit for bit (the checker too)
    assert asked[liar]  # asked for a share, at once with the other
    assert asked[honest] == set(range(layout.chunk_count))  # its share, then the liar's
    lied = [t for t in logs if "does not match the ledger's root" in t]
    assert len(lied) == 1, logs
    assert liar[:8] in lied[0]
