"""The sharded plan, streaming accumulators and global steps: sharded == whole, any order."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmlearn.errors import LocalProtocolError, RemoteProtocolError
from swarmlearn.merge import (
    CHUNK_BYTES_MIN,
    DEFAULT_CHUNK_BYTES,
    CoordMedian,
    Custom,
    GeoMedian,
    GeoMedianDriver,
    GeoPartials,
    Krum,
    Layout,
    Mean,
    ModelState,
    MultiKrum,
    RangeCollector,
    RangeMerge,
    StopReason,
    TensorSpec,
    TrimmedMean,
    WeightSet,
    chunk_bytes_for,
    default_arrivals,
    layout_of,
    merge,
    merge_sharded,
    pack,
    plan_shards,
    unpack,
)
from tests.merge_helpers import Spec, as_compute, random_states, specs, weight_lists

COORDINATE_METHODS = [Mean(), CoordMedian(), TrimmedMean(trim_fraction=0.25)]


def packed(states: list[ModelState], chunk: int) -> tuple[Layout, list[bytes]]:
    return layout_of(states[0], chunk), [pack(s, chunk)[0] for s in states]


# ----------------------------------------------------------------------------------- plan


@given(
    layout=specs(max_tensors=5),
    parts=st.integers(1, 12),
    granularity=st.sampled_from(["element", "tensor"]),
)
@settings(max_examples=80)
def test_plan_is_contiguous_balanced_and_element_aligned(
    layout: list[Spec], parts: int, granularity: Any
) -> None:
    (state,) = random_states(layout, 1, 0)
    lay = layout_of(state, 16)
    plan = plan_shards(lay, parts, granularity)
    assert [s.owner for s in plan.shards] == list(range(parts))
    assert plan.shards[0].start_byte == 0
    assert plan.shards[-1].stop_byte == lay.total_bytes
    for left, right in zip(plan.shards, plan.shards[1:], strict=False):
        assert left.stop_byte == right.start_byte
    boundaries = {0, lay.total_bytes}
    for spec in lay.tensors:
        boundaries |= {spec.offset, spec.stop}
        if granularity == "element":
            boundaries |= set(range(spec.offset, spec.stop, spec.itemsize))
    for shard in plan.shards:
        assert shard.start_byte in boundaries
        assert shard.nbytes >= 0
        if granularity == "element":
            assert abs(shard.nbytes - lay.total_bytes / parts) < 16
    covered = sorted(c for s in plan.shards for c in s.chunks(lay))
    assert set(covered) == set(range(lay.chunk_count))
    for chunk in range(lay.chunk_count):
        assert plan.owners_of_chunk(chunk) == tuple(
            s.owner for s in plan.shards if chunk in s.chunks(lay)
        )


def test_plan_gives_empty_ranges_to_extra_participants() -> None:
    lay = layout_of(ModelState({"x": np.zeros(3, np.float32)}), 8)
    plan = plan_shards(lay, 5)
    assert [s.nbytes for s in plan.shards] == [0, 4, 0, 4, 4]
    assert plan.owners_of_chunk(0) == (1, 3)
    assert plan.owners_of_chunk(1) == (4,)
    with pytest.raises(ValueError, match="at least one participant"):
        plan_shards(lay, 0)


# ------------------------------------------------------- sharded == whole, any arrival order


@given(
    layout=specs(),
    count=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
    chunk=st.sampled_from([8, 16, 24, 64, 4096]),
    shards=st.integers(1, 7),
    method=st.sampled_from(COORDINATE_METHODS),
    data=st.data(),
)
@settings(max_examples=300)
def test_streaming_sharded_merge_equals_whole_bit_for_bit(
    layout: list[Spec],
    count: int,
    seed: int,
    chunk: int,
    shards: int,
    method: Any,
    data: st.DataObject,
) -> None:
    states = random_states(layout, count, seed)
    weights = data.draw(weight_lists(count))
    lay, flats = packed(states, chunk)
    plan = plan_shards(lay, shards)
    arrivals = data.draw(st.permutations(default_arrivals(plan, count)))
    merged = merge_sharded(lay, flats, weights, method, shards=plan, arrivals=arrivals)
    expected, _ = pack(merge(states, weights, method), chunk)
    assert bytes(merged) == expected


big_shapes = st.lists(st.integers(1, 40), min_size=1, max_size=2).map(tuple)


@given(
    dtypes=st.lists(
        st.sampled_from(["float32", "float64", "float16", "bfloat16", "int64"]),
        min_size=1,
        max_size=4,
    ),
    shapes=st.lists(big_shapes, min_size=4, max_size=4),
    count=st.integers(2, 8),
    seed=st.integers(0, 2**32 - 1),
    chunk=st.sampled_from([64, 256, 1024]),
    shards=st.integers(1, 9),
    method=st.sampled_from(COORDINATE_METHODS),
    data=st.data(),
)
@settings(max_examples=60)
def test_larger_states_in_random_order_equal_whole(
    dtypes: list[str],
    shapes: list[tuple[int, ...]],
    count: int,
    seed: int,
    chunk: int,
    shards: int,
    method: Any,
    data: st.DataObject,
) -> None:
    layout = [
        (f"t{i}", dtype, shape)
        for i, (dtype, shape) in enumerate(zip(dtypes, shapes, strict=False))
    ]
    states = random_states(layout, count, seed)
    weights = data.draw(weight_lists(count))
    lay, flats = packed(states, chunk)
    plan = plan_shards(lay, shards)
    pairs = default_arrivals(plan, count)
    order = [pairs[i] for i in np.random.default_rng(seed).permutation(len(pairs))]
    merged = merge_sharded(lay, flats, weights, method, shards=plan, arrivals=order)
    assert bytes(merged) == pack(merge(states, weights, method), chunk)[0]


@given(
    layout=specs(dtypes=["float32", "float64", "float16", "bfloat16", "int32", "bool"]),
    seed=st.integers(0, 2**32 - 1),
    chunk=st.sampled_from([8, 24, 4096]),
    shards=st.integers(1, 5),
    data=st.data(),
)
@settings(max_examples=40)
def test_krum_sharded_equals_whole(
    layout: list[Spec], seed: int, chunk: int, shards: int, data: st.DataObject
) -> None:
    states = random_states(layout, 6, seed)
    weights = data.draw(weight_lists(6))
    lay, flats = packed(states, chunk)
    method = data.draw(st.sampled_from([Krum(byzantine_max=1), MultiKrum(byzantine_max=2)]))
    plan = plan_shards(lay, shards)
    arrivals = data.draw(st.permutations(default_arrivals(plan, 6)))
    merged = merge_sharded(lay, flats, weights, method, shards=plan, arrivals=arrivals)
    assert bytes(merged) == pack(merge(states, weights, method), chunk)[0]


GEO_RTOL = {"float64": 1e-5, "float32": 1e-5, "float16": 2e-3, "bfloat16": 1.6e-2}


@given(
    layout=specs(dtypes=["float32", "float64", "float16", "bfloat16", "int16", "bool"]),
    count=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
    chunk=st.sampled_from([8, 40, 4096]),
    shards=st.integers(1, 6),
    data=st.data(),
)
@settings(max_examples=40)
def test_geomedian_sharded_within_tolerance_and_order_free(
    layout: list[Spec], count: int, seed: int, chunk: int, shards: int, data: st.DataObject
) -> None:
    states = random_states(layout, count, seed)
    weights = data.draw(weight_lists(count))
    lay, flats = packed(states, chunk)
    plan = plan_shards(lay, shards)
    orders = [data.draw(st.permutations(default_arrivals(plan, count))) for _ in range(2)]
    results = [
        bytes(merge_sharded(lay, flats, weights, "geomedian", shards=plan, arrivals=o))
        for o in orders
    ]
    assert results[0] == results[1]
    sharded = unpack(results[0], lay)
    whole = merge(states, weights, "geomedian")
    scale = max(
        (
            float(np.abs(as_compute(s, n).astype(np.float64)).max(initial=0.0))
            for s in states
            for n, d, _ in layout
            if d in GEO_RTOL
        ),
        default=1.0,
    )
    for name, dtype, _ in layout:
        if dtype in GEO_RTOL:
            got, want = as_compute(sharded, name), as_compute(whole, name)
            assert np.allclose(got, want, rtol=GEO_RTOL[dtype], atol=1e-4 * max(scale, 1.0))
        else:
            assert np.array_equal(sharded[name], whole[name])


@given(
    layout=specs(dtypes=["float32", "float64", "float16", "bfloat16", "int16", "bool"]),
    count=st.integers(3, 6),
    seed=st.integers(0, 2**32 - 1),
    chunk=st.sampled_from([64, 256, 1024, 4096]),
    shards=st.integers(1, 6),
    data=st.data(),
)
@settings(max_examples=40, deadline=None)
def test_global_methods_on_chunk_plans_equal_whole_bit_for_bit(
    layout: list[Spec], count: int, seed: int, chunk: int, shards: int, data: st.DataObject
) -> None:
    """A plan that splits no chunk (what rounds use) groups the partial sums as the whole-state
    merge of that chunk size does: any number of owners, any arrival order, the same bytes.
    Tensors longer than numpy's pairwise block (128) make a different grouping show."""
    layout = [*layout, ("big.w", "float64", (700,)), ("big.v", "float32", (40, 25))]
    states = random_states(layout, count, seed)
    weights = data.draw(weight_lists(count))
    lay, flats = packed(states, chunk)
    method = data.draw(
        st.sampled_from([GeoMedian(), Krum(), MultiKrum(byzantine_max=(count - 3) // 2)])
    )
    plan = plan_shards(lay, shards, "chunk")
    assert all(s.start_byte % chunk == 0 or s.nbytes == 0 for s in plan.shards)
    arrivals = data.draw(st.permutations(default_arrivals(plan, count)))
    merged = merge_sharded(lay, flats, weights, method, shards=plan, arrivals=arrivals)
    whole = merge(states, weights, method, chunk_bytes=chunk)
    assert bytes(merged) == pack(whole, chunk)[0]


def test_every_arrival_order_gives_the_same_bytes() -> None:
    states = random_states(
        [("a", "float32", (40,)), ("b", "float16", (7, 3)), ("c", "int64", (5,))], 4, 1
    )
    lay, flats = packed(states, 24)
    rng = np.random.default_rng(2)
    pairs = default_arrivals(plan_shards(lay, 3), 4)
    for method in [*COORDINATE_METHODS, GeoMedian(), MultiKrum(byzantine_max=1)]:
        outputs = set()
        for _ in range(6):
            order = [pairs[i] for i in rng.permutation(len(pairs))]
            for shards in (1, 3, 4):
                merged = merge_sharded(
                    lay, flats, [1, 2, 3, 4], method, shards=shards, arrivals=order
                )
                if not isinstance(method, GeoMedian) or shards == 3:
                    outputs.add(bytes(merged))
        assert len(outputs) == 1, method


def test_custom_functions_shard_when_coordinatewise_or_tensor_planned() -> None:
    def double_mean(arrays: Any, weights: Any) -> Any:
        return (np.average(np.stack(arrays), axis=0, weights=weights) * 2).astype(arrays[0].dtype)

    states = random_states([("w", "float32", (6, 5)), ("n", "int8", (3,))], 3, 4)
    lay, flats = packed(states, 16)
    for method in (Custom(fn=double_mean, coordinatewise=True), Custom(fn=double_mean)):
        expected = pack(merge(states, [1, 2, 3], method), 16)[0]
        tensor_plan = plan_shards(lay, 3, "tensor")
        assert bytes(merge_sharded(lay, flats, [1, 2, 3], method, shards=tensor_plan)) == expected
    coordinatewise = Custom(fn=double_mean, coordinatewise=True)
    assert bytes(merge_sharded(lay, flats, [1, 2, 3], coordinatewise, shards=3)) == expected
    with pytest.raises(ValueError, match="tensor 'w' needs whole tensors"):
        merge_sharded(lay, flats, [1, 2, 3], Custom(fn=double_mean), shards=3)


# ----------------------------------------------------------------------- the accumulators


def test_range_merge_memory_is_the_range_plus_held_chunks() -> None:
    rng = np.random.default_rng(3)
    states = [ModelState({"w": rng.standard_normal(4096).astype(np.float32)}) for _ in range(4)]
    lay, flats = packed(states, 1024)
    weights = WeightSet.of([1, 2, 3, 4], 4)
    shard = plan_shards(lay, 2).shards[1]
    merge_range = RangeMerge(lay, shard, weights, Mean())
    for chunk in shard.chunks(lay):
        for participant in rng.permutation(4):
            start, stop = lay.chunk_span(chunk)
            merge_range.add(int(participant), chunk, flats[int(participant)][start:stop])
    stats = merge_range.statistics()
    assert merge_range.done
    assert stats.held_bytes == 0
    assert 0 < stats.held_bytes_max <= 3 * 1024
    assert stats.regions_done == stats.regions == 8
    expected = pack(merge(states, weights.values), 1024)[0][shard.start_byte : shard.stop_byte]
    assert bytes(merge_range.result()) == expected


def test_accumulators_reject_misuse() -> None:
    states = random_states([("w", "float32", (10,))], 2, 0)
    lay, flats = packed(states, 16)
    shard = plan_shards(lay, 2).shards[0]
    weights = WeightSet.of([1, 1], 2)
    for inbox in (RangeMerge(lay, shard, weights, Mean()), RangeCollector(lay, shard, weights)):
        with pytest.raises(LocalProtocolError, match=r"participant 2 is not in 0\.\.1"):
            inbox.add(2, 0, flats[0][:16])
        with pytest.raises(RemoteProtocolError, match="does not overlap"):
            inbox.add(0, 2, flats[0][32:40])
        with pytest.raises(RemoteProtocolError, match="must be 16 bytes"):
            inbox.add(0, 0, flats[0][:8])
        inbox.add(1, 0, flats[1][:16])
        with pytest.raises(RemoteProtocolError, match="arrived twice"):
            inbox.add(1, 0, flats[1][:16])
    with pytest.raises(LocalProtocolError, match="not complete"):
        RangeMerge(lay, shard, weights, Mean()).result()
    with pytest.raises(LocalProtocolError, match="missing 4 chunks"):
        RangeCollector(lay, shard, weights).stack()
    with pytest.raises(ValueError, match="is global"):
        RangeMerge(lay, shard, weights, GeoMedian())
    with pytest.raises(ValueError, match="do not hold every chunk"):
        merge_sharded(lay, flats, None, "mean", arrivals=[(0, 0)])


# --------------------------------------------------------------- geometric median driver


def partials(distances: list[float], moved: float = 0.0, norm: float = 100.0) -> GeoPartials:
    return GeoPartials(np.array(distances) ** 2, norm**2, moved**2)


@pytest.mark.parametrize(
    ("steps", "reason", "iterations"),
    [
        # (distances to the estimate, step length) after the start and each update
        ([([3.0, 4.0], 0.0), ([2.0, 3.0], 1e-5)], StopReason.CONVERGED, 1),
        ([([3.0, 4.0], 0.0), ([2.0, 3.0], 1.0), ([2.0, 3.0], 1.0)], StopReason.STAGNATED, 2),
        (
            [([3.0, 4.0], 0.0), ([2.0, 3.0], 1.0), ([2.0, 3.0], 0.5), ([2.0, 3.0], 0.6)],
            StopReason.STAGNATED,
            3,
        ),
        (
            [([3.0, 4.0], 0.0), ([2.0, 3.0], 1.0), ([2.5, 2.0], 1.0), ([2.0, 3.0], 1.0)],
            StopReason.OSCILLATING,
            3,
        ),
        (
            [([3.0, 4.0], 0.0), ([2.0, 3.0], 1.0), ([1.0, 2.0], 0.5), ([0.5, 1.0], 0.25)],
            StopReason.ITERATIONS,
            3,
        ),
        ([([0.0, 0.0], 0.0)], StopReason.CONVERGED, 0),
    ],
)
def test_geomedian_driver_stops(
    steps: list[tuple[list[float], float]], reason: StopReason, iterations: int
) -> None:
    driver = GeoMedianDriver(WeightSet.of([1, 1], 2), GeoMedian(iterations_max=3))
    for index, (distances, moved) in enumerate(steps):
        betas = driver.observe(partials(distances, moved))
        assert (betas is None) == (index == len(steps) - 1)
    assert driver.stop_reason is reason
    assert driver.iterations == iterations
    with pytest.raises(ValueError, match="already stopped"):
        driver.observe(partials([1.0, 1.0]))


def test_geomedian_driver_weights_are_guarded() -> None:
    driver = GeoMedianDriver(WeightSet.of([1, 3], 2), GeoMedian(eps=1e-3))
    betas = driver.observe(partials([0.0, 10.0]))
    assert betas is not None
    assert betas.tolist() == [1 / 0.01, 3 / 10.0]
    assert (
        GeoMedianDriver(WeightSet.of([1], 1), GeoMedian(iterations_max=0)).observe(partials([1.0]))
        is None
    )


@pytest.mark.parametrize(
    ("model_bytes", "participants", "most"),
    [(4_000_000, 8, 1.2), (10_000_000, 16, 1.2), (100_000_000, 4, 1.02), (2_000_000_000, 64, 1.3)],
)
def test_default_chunks_keep_a_sharded_exchange_sharded(
    model_bytes: int, participants: int, most: float
) -> None:
    """Owners get the chunks overlapping their ranges, whole: with the default chunk size the
    bytes sent to owners stay near the model's (a fixed 4 MiB sent a 4 MB model to every one
    of 8 owners whole: 8x)."""
    spec = TensorSpec("w", "float32", (model_bytes // 4,), 0)
    layout = Layout((spec,), model_bytes, chunk_bytes_for(model_bytes))
    plan = plan_shards(layout, participants, "element")
    sent = sum(
        layout.chunk_span(c)[1] - layout.chunk_span(c)[0]
        for shard in plan.shards
        for c in shard.chunks(layout)
    )
    assert sent / model_bytes <= most
    assert CHUNK_BYTES_MIN <= layout.chunk_bytes <= DEFAULT_CHUNK_BYTES
    assert layout.chunk_bytes & (layout.chunk_bytes - 1) == 0
