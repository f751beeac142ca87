"""The simulator's loop, seeds, scenarios, checkers and CLI: determinism and failure classes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable

import pytest

import swarmlearn.consensus.tendermint.simulation
import swarmlearn.roles.sl.simulation  # noqa: F401  (registers the bft-* and rounds-* scenarios)
from swarmlearn.sim import (
    AgreementChecker,
    EventLoop,
    FailureKind,
    Scenario,
    SeedTree,
    Stop,
    run_scenario,
)
from swarmlearn.sim.echo import EchoChecker, EchoGossip, corrupt_rumors
from swarmlearn.sim.scenarios import SetupContext, rumor_workload, scenario
from swarmlearn.sim.testing import sweep
from tests.sim_probe import probe_factory

pytestmark = pytest.mark.sim

# ---------------------------------------------------------------- loop and seeds


def test_events_run_in_time_order_and_ties_in_scheduling_order() -> None:
    loop = EventLoop()
    seen: list[str] = []
    loop.call_at(2.0, lambda: seen.append("late"))
    for name in "abc":
        loop.call_at(1.0, lambda name=name: seen.append(name))  # type: ignore[misc]
    cancelled = loop.call_at(1.5, lambda: seen.append("cancelled"))
    cancelled.cancel()
    outcome = loop.run()
    assert seen == ["a", "b", "c", "late"]
    assert outcome.stop is Stop.IDLE
    assert outcome.events == 4
    assert loop.now == 2.0


def test_a_run_stops_on_condition_time_limit_or_budget() -> None:
    loop = EventLoop()
    count = [0]

    def tick() -> None:
        count[0] += 1
        loop.call_later(1.0, tick)

    loop.call_at(0.0, tick)
    assert loop.run(until=lambda: count[0] == 3).stop is Stop.CONDITION
    assert loop.run(time_limit=10.5).stop is Stop.TIME_LIMIT
    assert loop.now == 10.5
    assert count[0] == 11
    assert loop.run(max_events=5).stop is Stop.EVENT_BUDGET
    assert count[0] == 16
    with pytest.raises(ValueError, match="in the past"):
        loop.call_at(1.0, tick)


def test_sub_seeds_are_independent_streams() -> None:
    tree = SeedTree(42)
    network = tree.rng("network")
    first = [network.random() for _ in range(3)]
    busy = tree.rng("node", "n1")
    for _ in range(1000):
        busy.random()  # many draws elsewhere ...
    again = SeedTree(42).rng("network")
    assert [again.random() for _ in range(3)] == first  # ... change nothing here
    assert SeedTree(43).rng("network").random() != first[0]
    assert tree.subseed("node", "n1") != tree.subseed("node", "n2")
    with pytest.raises(ValueError, match="non-negative"):
        SeedTree(-1)


# ---------------------------------------------------------------- determinism


ECHO_SCENARIOS = ["calm", "crashes", "gossip", "lossy", "partitions", "pauses"]


@pytest.mark.parametrize("name", ECHO_SCENARIOS)
def test_the_same_seed_gives_the_same_run_and_other_seeds_other_runs(name: str) -> None:
    fingerprints = []
    for seed in (1, 2, 3):
        first, second = run_scenario(name, seed), run_scenario(name, seed)
        assert first.ok, first.summary()
        assert first == second
        fingerprints.append(first.fingerprint)
    assert len(set(fingerprints)) == 3


def test_the_seed_sweep_passes_for_the_default_scenario(
    seed_sweep: Callable[..., list[object]],
) -> None:
    assert len(seed_sweep("gossip")) >= 1


def test_a_sweep_failure_prints_the_replay_command() -> None:
    with pytest.raises(
        AssertionError,
        match=r"replay: python -m swarmlearn.sim --seed 0 --nodes 4 --scenario test-forgery",
    ):
        sweep("test-forgery", range(3), nodes=4)


# ---------------------------------------------------------------- failure classes


def _forgery(context: SetupContext) -> None:
    rumor_workload(context)
    context.sim.set_policy("n1", corrupt_rumors)


def _silent_origin(context: SetupContext) -> None:
    context.sim.request("n0", b"only I know")
    context.sim.loop.call_at(0.0, lambda: context.sim.network.isolate("n0", context.sim.node_ids))
    # The isolation outlives the fault phase: the healed phase must notice.
    context.sim.loop.call_at(
        context.fault_phase_s + 0.001,
        lambda: context.sim.network.isolate("n0", context.sim.node_ids),
    )


def _boom(context: SetupContext) -> None:
    context.sim.request("n2", ("boom",), at=1.0)


# Registered when this module is imported (after the parametrized sweep above was collected).
scenario(
    Scenario(
        "test-forgery",
        "a byzantine node forges rumors",
        EchoGossip.factory,
        lambda: [EchoChecker()],
        _forgery,
        fault_phase_s=5,
    )
)
scenario(
    Scenario(
        "test-stuck",
        "a node stays cut off",
        EchoGossip.factory,
        lambda: [EchoChecker()],
        _silent_origin,
        fault_phase_s=2,
        converge_budget_s=5,
    )
)
scenario(
    Scenario(
        "test-boom", "a core raises", lambda: probe_factory, lambda: [], _boom, fault_phase_s=2
    )
)


@pytest.mark.parametrize(
    ("name", "kind", "message"),
    [
        ("test-forgery", FailureKind.SAFETY, "echo at .*: rumor .*forged by n1"),
        (
            "test-stuck",
            FailureKind.LIVENESS,
            r"not converged 5 s after healing \(time limit\): 3 node\(s\) behind",
        ),
        ("test-boom", FailureKind.CRASH, "n2 raised RuntimeError: probe asked to fail"),
    ],
)
def test_failures_are_classed_and_say_how_to_replay(
    name: str, kind: FailureKind, message: str
) -> None:
    result = run_scenario(name, seed=5, nodes=4)
    assert result.failure is kind
    assert re.search(message, result.message), result.message
    lines = result.summary()
    assert lines[-2] == f"replay: python -m swarmlearn.sim --seed 5 --nodes 4 --scenario {name}"
    assert lines[-1] == f"fingerprint: {result.fingerprint}"


def test_the_agreement_checker_catches_two_decisions_for_one_slot() -> None:
    checker = AgreementChecker(lambda value: (value[0], value[1]), name="agreement")
    assert checker.on_deliver("a", 1, (7, "x"), 1.0) is None
    assert checker.on_deliver("b", 1, (7, "x"), 1.0) is None
    violation = checker.on_deliver("c", 1, (7, "y"), 2.0)
    assert violation is not None
    assert violation.kind is FailureKind.SAFETY
    assert "slot 7: a decided 'x', c decided 'y'" in violation.message


# ---------------------------------------------------------------- the command line


@pytest.mark.process
def test_the_cli_prints_seed_summary_and_fingerprint() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "swarmlearn.sim",
            "--seed",
            "7",
            "--nodes",
            "6",
            "--scenario",
            "crashes",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "SEED=7"
    assert any(line.startswith("faults planned: crash x") for line in lines)
    assert "scenario crashes, 6 nodes: ok" in lines
    assert lines[-1] == f"fingerprint: {run_scenario('crashes', 7, 6).fingerprint}"


def fingerprint_in_child(scenario: str, seed: int, hash_seed: str) -> str:
    """A scenario's fingerprint as ``python -m swarmlearn.sim`` prints it, in a fresh
    interpreter with its own string hashing (``PYTHONHASHSEED``)."""
    done = subprocess.run(
        [sys.executable, "-m", "swarmlearn.sim", "--seed", str(seed), "--scenario", scenario],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env={**os.environ, "PYTHONHASHSEED": hash_seed},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    last = done.stdout.splitlines()[-1]
    assert last.startswith("fingerprint: "), last
    return last.removeprefix("fingerprint: ")


@pytest.mark.process
@pytest.mark.parametrize("scenario", ["bft-faults", "rounds-kill"])
def test_a_ledger_or_round_scenario_has_one_fingerprint_in_every_process(scenario: str) -> None:
    """The ledger's and the rounds' runs, not only gossip's, depend on the seed alone: not on
    set order, string hashes or anything else a new interpreter draws afresh."""
    here = run_scenario(scenario, 3).fingerprint
    assert fingerprint_in_child(scenario, 3, "1") == here
    assert fingerprint_in_child(scenario, 3, "2") == here
