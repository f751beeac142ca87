"""BFT time and equivocating proposers in the simulator: named scenarios and a seed sweep.

``bft-skewed-clock``: one validator of four runs 10 minutes ahead, leaves mid-run and comes
back; its clock moves no block time and its absence halts nothing. ``bft-split-sweep``: two
of seven proposers send two valid blocks to the two halves of the network, under every
fault kind. (Both also run, two seeds each, in test_consensus_sim's scenario test.)
"""

from __future__ import annotations

import pytest

import swarmlearn.consensus.tendermint.simulation  # noqa: F401  (registers the bft-* scenarios)
from swarmlearn.consensus.tendermint.types import Commit, ValidatorSet
from swarmlearn.sim import run_scenario
from swarmlearn.sim.testing import sweep

pytestmark = pytest.mark.sim


def test_a_clock_ten_minutes_ahead_moves_no_block_time_and_its_absence_halts_nothing() -> None:
    for seed in range(3):
        result = run_scenario("bft-skewed-clock", seed)
        assert result.ok, "\n".join(result.summary())


def test_the_block_time_checker_catches_a_block_time_that_follows_one_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def latest(commit: Commit, validators: ValidatorSet) -> int:
        return max(sig.time_ms for sig in commit.signatures)

    monkeypatch.setattr(Commit, "median_time_ms", latest)
    result = run_scenario("bft-skewed-clock", 0)
    assert not result.ok
    assert "bft-time" in result.message
    assert "+599." in result.message  # the block was stamped with the skewed clock


@pytest.mark.slow
def test_a_seed_sweep_of_equivocating_proposers_under_every_fault() -> None:
    results = sweep("bft-split-sweep", range(40))
    assert all(result.ok for result in results)
    assert len({result.fingerprint for result in results}) == 40
