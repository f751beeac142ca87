"""Every merge method in simulated sync rounds: whole swarm nodes (ledger + SL round core), real
keys, chunks and partial sums over the simulated network.

Each participant must end a round with the same bytes, equal to the merge engine's whole-state
reference (``merge``) bit for bit, for the coordinate methods and the global ones (geometric
median, Krum, Multi-Krum: the owners exchange per-piece partial sums each step). Faults: a
participant that dies mid-round (its partial sums never come), an owner whose partial sums are
garbage (excluded on the ledger, as a chunk unlike its commitment is).
"""

from __future__ import annotations

import random
from typing import cast

import numpy as np
import pytest

from swarmlearn.consensus.ledger.app import DEFAULT_CONTRACT
from swarmlearn.merge import ModelState, flatten, layout_of, merge
from swarmlearn.merge.methods import round_method
from swarmlearn.roles.node.core import SwarmNodeCore
from swarmlearn.roles.sl.core import Contribute
from swarmlearn.roles.sl.simulation import corrupt_partials
from swarmlearn.sim import Simulator, run_scenario
from swarmlearn.sim.testing import sweep
from tests.test_rounds_sim import RoundChecker, Swarm, make_swarm, model, start_simulator

pytestmark = pytest.mark.sim

CHUNK_BYTES = 1024
METHODS = ["mean", "coordmedian", "trimmedmean", "geomedian", "krum", "multikrum"]


@pytest.fixture(scope="module")
def swarm5(tmp_path_factory: pytest.TempPathFactory) -> Swarm:
    return make_swarm(tmp_path_factory.mktemp("swarm5"), 5)


def run_method_rounds(
    swarm: Swarm, method: str, rounds: int, seed: int = 1, cheat: str | None = None
) -> tuple[RoundChecker, list[dict[str, ModelState]], Simulator]:
    checker = RoundChecker()
    sim = start_simulator(swarm, seed, checker)
    if cheat is not None:
        sim.set_policy(cheat, corrupt_partials)
    rng = np.random.default_rng(seed)
    nodes = sorted(swarm.identities)
    layout = layout_of(model(rng), chunk_bytes=CHUNK_BYTES)
    contributions = []
    for number in range(rounds):
        states = {node: model(rng) for node in nodes}
        contributions.append(states)
        for node in nodes:
            weight = random.Random(node).randint(1, 100)
            flat = bytes(flatten(states[node], layout))
            request = Contribute(DEFAULT_CONTRACT, flat, layout, weight, len(nodes) - 1, method)
            sim.request(node, request, at=1.0 + 10.0 * number)
    honest = {node for node in nodes if node != cheat}  # every one of them, not a count of
    sim.run(  # nodes: the cheat may finish a round too, before an honest node does
        until=lambda: (
            bool(sim.violations)
            or (
                len(checker.done) == rounds
                and all(honest <= set(done) for done in checker.done.values())
            )
        ),
        time_limit=10.0 * rounds + 60,
    )
    assert not sim.violations, sim.violations
    return checker, contributions, sim


@pytest.mark.parametrize("method", METHODS)
def test_each_method_ends_rounds_bit_identical_and_equal_to_the_reference(
    swarm5: Swarm, method: str
) -> None:
    checker, contributions, _ = run_method_rounds(swarm5, method, rounds=2)
    assert checker.failed == []
    nodes = sorted(swarm5.identities)
    weights = [random.Random(node).randint(1, 100) for node in nodes]
    layout = layout_of(contributions[0][nodes[0]], chunk_bytes=CHUNK_BYTES)
    for number, states in enumerate(contributions, start=1):
        done = checker.done[(DEFAULT_CONTRACT, number)]
        assert sorted(done) == nodes
        method_n = round_method(method, len(nodes))
        reference = merge([states[n] for n in nodes], weights, method_n, chunk_bytes=CHUNK_BYTES)
        assert next(iter(done.values())).flat == bytes(flatten(reference, layout))


def test_robust_methods_differ_from_the_mean(swarm5: Swarm) -> None:
    """The round really ran each method: one round's five merges are five different models."""
    merged = {}
    for method in ["mean", "coordmedian", "geomedian", "krum", "multikrum"]:
        checker, _, _ = run_method_rounds(swarm5, method, rounds=1)
        merged[method] = bytes(next(iter(checker.done[(DEFAULT_CONTRACT, 1)].values())).flat)
    assert len(set(merged.values())) == len(merged)


def test_an_owner_with_garbage_partial_sums_is_excluded_and_the_rest_merge(
    swarm5: Swarm,
) -> None:
    nodes = sorted(swarm5.identities)
    cheat = nodes[1]
    checker, contributions, sim = run_method_rounds(swarm5, "geomedian", rounds=1, cheat=cheat)
    done = checker.done[(DEFAULT_CONTRACT, 1)]
    honest = [n for n in nodes if n != cheat]
    assert set(honest) <= set(done)
    cores = {n: sim.nodes[n].core for n in nodes}
    assert all(isinstance(core, SwarmNodeCore) for core in cores.values())
    app = cast(SwarmNodeCore, cores[nodes[0]]).app
    record = app.state.contracts[DEFAULT_CONTRACT].rounds[1]
    assert "partial sums of step 0: negative or non-finite" in record.excluded[cheat]
    assert record.participants == tuple(honest)
    weights = [random.Random(n).randint(1, 100) for n in honest]
    states = [contributions[0][n] for n in honest]
    layout = layout_of(states[0], chunk_bytes=CHUNK_BYTES)
    method = round_method("geomedian", len(honest))
    reference = merge(states, weights, method, chunk_bytes=CHUNK_BYTES)
    assert done[honest[0]].flat == bytes(flatten(reference, layout))
    dropped = [cast(SwarmNodeCore, cores[n]).sl.partials_dropped for n in honest]
    assert sum(dropped) >= 1
    assert sim.counters.metrics["sl_partials_dropped"] == sum(dropped)


@pytest.mark.parametrize(
    "name",
    [f"rounds-{m}" for m in ("coordmedian", "trimmedmean", "geomedian", "krum", "multikrum")],
)
def test_method_scenarios_end_every_round_with_one_merge(name: str) -> None:
    result = run_scenario(name, 1)
    assert result.ok, "\n".join(result.summary())


def test_the_geomedian_scenario_replays_from_its_seed() -> None:
    assert (
        run_scenario("rounds-geomedian", 2).fingerprint
        == run_scenario("rounds-geomedian", 2).fingerprint
    )


@pytest.mark.parametrize(
    "name", ["rounds-kill-geomedian", "rounds-byzantine-partials", "rounds-partition-krum"]
)
def test_a_seed_sweep_of_faulty_global_rounds(name: str) -> None:
    assert len(sweep(name, range(2, 7))) == 5
