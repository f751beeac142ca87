"""pytest helpers for simulator tests (a plugin: ``pytest_plugins = ["swarmlearn.sim.testing"]``).

The ``seed_sweep`` fixture runs a scenario over many seeds and fails on the first bad one
with its failure class, message and one-line replay command. How many seeds: the
``--sim-seeds N`` option, else ``SWARMLEARN_SIM_SEEDS``, else 20.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from swarmlearn.sim.scenarios import RunResult, run_scenario

DEFAULT_SEEDS = 20

Sweep = Callable[..., list[RunResult]]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--sim-seeds", type=int, default=None, help="seeds per simulator sweep")


def sweep(scenario: str, seeds: range, nodes: int | None = None) -> list[RunResult]:
    """Run ``scenario`` for every seed; raise ``AssertionError`` with the replay command."""
    results = []
    for seed in seeds:
        result = run_scenario(scenario, seed, nodes)
        if not result.ok:
            raise AssertionError(
                f"seed {seed}: {result.failure} failure: {result.message}\nreplay: {result.replay}"
            )
        results.append(result)
    return results


@pytest.fixture
def seed_sweep(request: pytest.FixtureRequest) -> Sweep:
    option = request.config.getoption("--sim-seeds")
    count = (
        option if option is not None else int(os.environ.get("SWARMLEARN_SIM_SEEDS", DEFAULT_SEEDS))
    )

    def run(scenario: str, nodes: int | None = None, first_seed: int = 0) -> list[RunResult]:
        return sweep(scenario, range(first_seed, first_seed + count), nodes)

    return run
