"""Merge method specs for sync rounds (``name`` or ``name:param=value,...``), the method a round
of N participants merges with, and an owner's global steps (sans-IO) against the reference."""

from __future__ import annotations

import numpy as np
import pytest

from swarmlearn.errors import ConfigError
from swarmlearn.merge import GeoMedian, Krum, Mean, MultiKrum, TrimmedMean, merge, pack
from swarmlearn.merge.kernels import WeightSet
from swarmlearn.merge.manifest import layout_of
from swarmlearn.merge.methods import (
    ROUND_METHODS,
    extra_exchange_ms,
    parse_round_method,
    round_method,
)
from swarmlearn.merge.plan import plan_shards
from swarmlearn.merge.sharded import GlobalSteps, float_piece_count
from swarmlearn.merge.stream import RangeCollector, aligned_buffer
from swarmlearn.roles.sl.state import Attempt, global_waiting
from tests.merge_helpers import random_states


def test_every_method_of_the_engine_runs_in_rounds() -> None:
    assert ROUND_METHODS == ("coordmedian", "geomedian", "krum", "mean", "multikrum", "trimmedmean")


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("geomedian", ("geomedian", {})),
        ("trimmedmean:trim_fraction=0.3", ("trimmedmean", {"trim_fraction": 0.3})),
        (
            "multikrum:byzantine_max=2, selected=4",
            ("multikrum", {"byzantine_max": 2, "selected": 4}),
        ),
        (
            "geomedian:iterations_max=5,tolerance=1e-8",
            ("geomedian", {"iterations_max": 5, "tolerance": 1e-8}),
        ),
    ],
)
def test_specs_parse(spec: str, parsed: tuple[str, dict[str, float]]) -> None:
    assert parse_round_method(spec) == parsed


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("median", "merge method 'median' is not one of: coordmedian, geomedian, krum, mean,"),
        (
            "krum:f=1",
            "merge method 'krum:f=1': 'f=1' is not param=value with a parameter of krum"
            " (valid: byzantine_max)",
        ),
        ("mean:x=1", "(valid: none)"),
        ("krum:byzantine_max=one", "byzantine_max must be int, got 'one'"),
        ("trimmedmean:trim_fraction=0.5", "trim_fraction must be in [0, 0.5), got 0.5"),
        ("geomedian:iterations_max=5000", "iterations_max must be in 0..1000, got 5000"),
        ("multikrum:selected=0", "selected must be >= 1, got 0"),
    ],
)
def test_bad_specs_are_one_line_naming_what_is_valid(spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_round_method(spec)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_round_fits_krum_to_its_participants() -> None:
    assert round_method("krum", 2) == Mean()  # nothing to compare
    assert round_method("krum", 3) == Krum(byzantine_max=0)
    assert round_method("multikrum", 10) == MultiKrum(byzantine_max=3)  # N >= 2f + 3
    assert round_method("multikrum:byzantine_max=5", 6) == MultiKrum(byzantine_max=3)  # <= N - 3
    assert round_method("multikrum:selected=9", 4) == MultiKrum(byzantine_max=0, selected=4)
    assert round_method("trimmedmean:trim_fraction=0.3", 3) == TrimmedMean(trim_fraction=0.3)
    assert round_method("geomedian", 1) == GeoMedian()


@pytest.mark.parametrize("method", [GeoMedian(), Krum(byzantine_max=1), MultiKrum(byzantine_max=1)])
def test_owners_steps_exchanging_rows_equal_the_whole_state_merge(method: GeoMedian | Krum) -> None:
    """What a round does, without the network: each owner's rows to all, folded in owner order."""
    states = random_states(
        [("a", "float64", (300, 3)), ("b", "float16", (40,)), ("c", "int64", (5,))], 5, 7
    )
    weights = [1.0, 2.0, 3.0, 4.0, 5.0]
    layout = layout_of(states[0], 1024)
    flats = [memoryview(pack(s, 1024)[0]) for s in states]
    plan = plan_shards(layout, 3, "chunk")
    owners = []
    for shard in plan.shards:
        inbox = RangeCollector(layout, shard, WeightSet.of(weights, 5))
        for chunk in shard.chunks(layout):
            start, stop = layout.chunk_span(chunk)
            for participant, flat in enumerate(flats):
                inbox.add(participant, chunk, flat[start:stop])
        owners.append(GlobalSteps(inbox.stack(), method))
    rows = [owner.start() for owner in owners]
    for owner, shard, part in zip(owners, plan.shards, rows, strict=True):
        assert part.shape == (float_piece_count(layout, shard), owner.width)
    while not owners[0].finished:
        rows = [owner.advance(rows) for owner in owners]  # type: ignore[misc]
        assert len({owner.finished for owner in owners}) == 1  # all decide alike
    merged = aligned_buffer(layout.total_bytes, 0)
    for owner, shard in zip(owners, plan.shards, strict=True):
        owner.write(merged[shard.start_byte : shard.stop_byte])
    assert bytes(merged) == pack(merge(states, weights, method, chunk_bytes=1024), 1024)[0]
    with pytest.raises(ValueError, match="done already"):
        owners[0].advance(rows)


def test_global_methods_get_a_longer_exchange_deadline() -> None:
    assert extra_exchange_ms("mean", 4, 10**9) == 0
    assert extra_exchange_ms("trimmedmean", 4, 10**9) == 4 * 2_000
    assert extra_exchange_ms("coordmedian", 10, 100_000_000) == 10 * 2_000 // 10
    assert extra_exchange_ms("geomedian", 4, 100_000_000) == 101 * 30 + 101 * 2_000 // 10
    assert extra_exchange_ms("krum", 4, 10**9) == 30 + 4 * 2_000
    assert extra_exchange_ms("krum", 2, 10**9) == 0  # merged as the mean
    assert extra_exchange_ms("no-such", 4, 10**9) == 0


def test_a_stalled_exchange_names_the_step_and_the_owners_it_waits_for() -> None:
    states = random_states([("a", "float32", (40,))], 3, 1)
    layout = layout_of(states[0], 64)
    plan = plan_shards(layout, 3, "chunk")
    weights = WeightSet.of([1.0, 1.0, 1.0], 3)
    collector = RangeCollector(layout, plan.shards[0], weights)
    attempt = Attempt(1, ("aaaaaaaaaa", "bbbbbbbbbb", "cccccccccc"), 0, collector, plan=plan)
    attempt.method = GeoMedian()
    assert global_waiting(attempt) == "; waiting for chunks of my range"
    flats = [memoryview(pack(s, 64)[0]) for s in states]
    for chunk in plan.shards[0].chunks(layout):
        start, stop = layout.chunk_span(chunk)
        for participant, flat in enumerate(flats):
            collector.add(participant, chunk, flat[start:stop])
    attempt.steps = GlobalSteps(collector.stack(), GeoMedian())
    attempt.partials = {0: {0: attempt.steps.start(), 2: np.zeros(0)}}
    assert global_waiting(attempt) == "; step 0 waits for partial sums from bbbbbbbb"
    attempt.pieces.add(0)
    assert global_waiting(attempt) == ""
