"""Each merge method against a plain numpy (or exact Fraction) reference, and the registry."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from swarmlearn.errors import ConfigError
from swarmlearn.merge import (
    METHODS,
    CoordMedian,
    Custom,
    GeoMedian,
    Krum,
    ModelState,
    MultiKrum,
    TrimmedMean,
    UnknownMethodError,
    bfloat16_from_float32,
    merge,
    merge_arrays,
    method_named,
)
from tests.merge_helpers import (
    as_compute,
    bf16_round_reference,
    int_mean_reference,
    krum_reference,
    majority_reference,
    random_array,
    trimmed_reference,
    weight_lists,
    weighted_lower_median,
    weiszfeld_reference,
)

FLOATS = ("float64", "float32", "float16", "bfloat16")
RTOL = {"float64": 1e-12, "float32": 1e-5, "float16": 2e-3, "bfloat16": 1.6e-2}


def float_states(dtype: str, count: int, size: int, seed: int) -> list[ModelState]:
    rng = np.random.default_rng(seed)
    bf16 = ["x"] if dtype == "bfloat16" else []
    return [
        ModelState({"x": random_array(rng, dtype, (size,), False)}, bfloat16=bf16)
        for _ in range(count)
    ]


def stacked(states: Sequence[ModelState]) -> NDArray[np.float64]:
    return np.stack([as_compute(s, "x").astype(np.float64) for s in states])


problem = st.tuples(
    st.sampled_from(FLOATS), st.integers(1, 7), st.integers(0, 40), st.integers(0, 2**32 - 1)
)


@given(problem=problem, data=st.data())
@settings(max_examples=40)
def test_mean_matches_numpy_average(
    problem: tuple[str, int, int, int], data: st.DataObject
) -> None:
    dtype, count, size, seed = problem
    weights = data.draw(weight_lists(count))
    states = float_states(dtype, count, size, seed)
    got = as_compute(merge(states, weights, "mean"), "x").astype(np.float64)
    expected = np.average(stacked(states), axis=0, weights=weights) if size else np.zeros(0)
    scale = np.abs(stacked(states)).max(initial=1.0)
    assert np.allclose(got, expected, rtol=RTOL[dtype], atol=RTOL[dtype] * scale)


def test_mean_follows_the_documented_formula_bit_for_bit() -> None:
    rng = np.random.default_rng(5)
    arrays = [rng.standard_normal(100).astype(np.float32) for _ in range(4)]
    weights = [3.0, 1.0, 7.5, 2.0]
    total = 0.0
    for w in weights:
        total += w
    factors = (np.array(weights) / total).astype(np.float32)
    acc = arrays[0] * factors[0]
    for array, factor in zip(arrays[1:], factors[1:], strict=True):
        acc = acc + array * factor
    assert merge_arrays(arrays, weights).tobytes() == acc.tobytes()


def test_bfloat16_mean_rounds_the_float32_mean_to_nearest_even() -> None:
    rng = np.random.default_rng(6)
    values = [rng.standard_normal(200).astype(np.float32) for _ in range(3)]
    states = [ModelState({"x": bfloat16_from_float32(v)}, bfloat16=["x"]) for v in values]
    merged = merge(states, [1, 2, 3])
    wide = [as_compute(s, "x") for s in states]
    factors = (np.array([1, 2, 3]) / 6.0).astype(np.float32)
    f32 = wide[0] * factors[0] + wide[1] * factors[1] + wide[2] * factors[2]
    assert merged.dtype("x") == "bfloat16"
    assert merged["x"].tolist() == [bf16_round_reference(float(v)) for v in f32]


@given(problem=problem, data=st.data())
@settings(max_examples=40)
def test_coordmedian_is_the_lower_weighted_median(
    problem: tuple[str, int, int, int], data: st.DataObject
) -> None:
    dtype, count, size, seed = problem
    weights = np.array(data.draw(weight_lists(count)))
    states = float_states(dtype, count, size, seed)
    got = as_compute(merge(states, weights, "coordmedian"), "x")
    values = np.stack([as_compute(s, "x") for s in states])
    expected = [weighted_lower_median(values[:, i], weights) for i in range(size)]
    assert got.tolist() == [float(v) for v in expected]


def test_coordmedian_even_split_takes_the_lower_value() -> None:
    arrays = [
        np.array([1.0, 4.0]),
        np.array([2.0, 3.0]),
        np.array([3.0, 2.0]),
        np.array([4.0, 1.0]),
    ]
    assert merge_arrays(arrays, None, "coordmedian").tolist() == [2.0, 2.0]
    assert merge_arrays(arrays, [1, 1, 1, 3], "coordmedian").tolist() == [3.0, 1.0]


@given(problem=problem, fraction=st.sampled_from([0.0, 0.1, 0.2, 0.3, 0.45]), data=st.data())
@settings(max_examples=40)
def test_trimmedmean_matches_sort_trim_average(
    problem: tuple[str, int, int, int], fraction: float, data: st.DataObject
) -> None:
    dtype, count, size, seed = problem
    weights = np.array(data.draw(weight_lists(count)))
    states = float_states(dtype, count, size, seed)
    method = TrimmedMean(trim_fraction=fraction)
    got = as_compute(merge(states, weights, method), "x").astype(np.float64)
    values = np.stack([as_compute(s, "x") for s in states])
    trim = int(np.floor(fraction * count))
    expected = np.array([trimmed_reference(values[:, i], weights, trim) for i in range(size)])
    scale = np.abs(values).max(initial=1.0)
    assert np.allclose(got, expected, rtol=RTOL[dtype], atol=RTOL[dtype] * scale)


@pytest.mark.parametrize("seed", range(8))
def test_geomedian_matches_plain_weiszfeld(seed: int) -> None:
    rng = np.random.default_rng(seed)
    count = int(rng.integers(3, 9))
    points = rng.standard_normal((count, 30)) + rng.standard_normal(30)
    points[0] += 50.0  # an outlier the median must resist
    weights = rng.integers(1, 100, count).astype(np.float64)
    method = GeoMedian(tolerance=1e-13, iterations_max=10_000)
    got = merge_arrays(list(points), weights, method)
    expected = weiszfeld_reference(points, weights, method.eps)
    assert np.allclose(got, expected, rtol=1e-9, atol=1e-9)
    assert np.linalg.norm(got - points[1:].mean(axis=0)) < np.linalg.norm(points.mean(axis=0) - got)


def test_geomedian_at_a_heavy_data_point_lands_within_the_guard() -> None:
    rng = np.random.default_rng(1)
    points = rng.standard_normal((5, 30))
    weights = np.array([10.0, 10.0, 10.0, 10.0, 100.0])  # optimal: point 4 itself
    coarse = merge_arrays(list(points), weights, GeoMedian())
    assert np.linalg.norm(coarse - points[4]) <= 1e-5 * np.linalg.norm(points[4])
    fine = merge_arrays(list(points), weights, GeoMedian(tolerance=1e-14, eps=1e-9))
    span = np.linalg.norm(points - points[4], axis=1).max()
    assert np.linalg.norm(fine - points[4]) <= 1e-9 * span


def test_geomedian_guards_points_on_the_estimate() -> None:
    same = np.array([1.0, 2.0, 3.0])
    arrays = [same, same.copy(), same.copy(), np.array([100.0, -50.0, 7.0])]
    got = merge_arrays(arrays, [1, 1, 1, 1], "geomedian")
    assert np.allclose(got, same, atol=1e-6)
    identical = merge_arrays([same, same, same], None, "geomedian")
    assert identical.tolist() == same.tolist()


@given(seed=st.integers(0, 2**32 - 1), count=st.integers(4, 10), byzantine=st.integers(0, 3))
@settings(max_examples=30)
def test_krum_and_multikrum_select_like_the_reference(
    seed: int, count: int, byzantine: int
) -> None:
    if count - byzantine - 2 < 1:
        return
    rng = np.random.default_rng(seed)
    points = rng.standard_normal((count, 12))
    points[:byzantine] *= -20.0
    weights = rng.integers(1, 100, count).astype(np.float64)
    states = [ModelState({"x": p}) for p in points]
    (best,) = krum_reference(points, byzantine, 1)
    assert (
        merge(states, weights, Krum(byzantine_max=byzantine))["x"].tolist() == points[best].tolist()
    )
    chosen = krum_reference(points, byzantine, count - byzantine)
    multi = merge(states, weights, MultiKrum(byzantine_max=byzantine))
    subset = merge([states[k] for k in chosen], weights[chosen], "mean")
    assert multi == subset
    assert np.allclose(multi["x"], np.average(points[chosen], axis=0, weights=weights[chosen]))


@pytest.mark.parametrize("dtype", ["int8", "int32", "int64", "uint16", "uint64"])
@pytest.mark.parametrize("wide", [False, True])
def test_integer_buffers_use_exact_rounded_mean_or_max(dtype: str, wide: bool) -> None:
    rng = np.random.default_rng(9)
    weights = [0.1, 3.0, 7.0, 2.5]
    names = ["running", "bn.num_batches_tracked"]
    states = [
        ModelState({n: random_array(rng, dtype, (25,), wide) for n in names}) for _ in weights
    ]
    for method in ("mean", "coordmedian", "geomedian", "trimmedmean"):
        merged = merge(states, weights, method)
        assert merged["running"].dtype == np.dtype(dtype)
        columns = [[int(s["running"][i]) for s in states] for i in range(25)]
        assert merged["running"].tolist() == [int_mean_reference(c, weights) for c in columns]
        expected_max = np.maximum.reduce([s["bn.num_batches_tracked"] for s in states])
        assert merged["bn.num_batches_tracked"].tolist() == expected_max.tolist()


def test_integer_mean_ties_round_to_even() -> None:
    arrays = [np.array([0, 1, -1, 2, -3], np.int32), np.array([1, 2, -2, 3, -2], np.int32)]
    assert merge_arrays(arrays).tolist() == [0, 2, -2, 2, -2]


def test_bool_buffers_use_weighted_majority_ties_false() -> None:
    rng = np.random.default_rng(10)
    weights = [1.0, 2.0, 3.0, 0.5]
    arrays = [rng.random(50) < 0.5 for _ in weights]
    got = merge_arrays(arrays, weights, "mean")
    expected = [majority_reference([bool(a[i]) for a in arrays], weights) for i in range(50)]
    assert got.dtype == np.bool_
    assert got.tolist() == expected
    tie = merge_arrays([np.array([True]), np.array([False])])
    assert tie.tolist() == [False]


def test_counter_suffixes_are_configurable() -> None:
    arrays = [np.array([1, 10], np.int64), np.array([3, 20], np.int64)]
    states = [ModelState({"steps": a}) for a in arrays]
    assert merge(states)["steps"].tolist() == [2, 15]
    assert merge(states, None, CoordMedian(counter_suffixes=("steps",)))["steps"].tolist() == [
        3,
        20,
    ]


# ------------------------------------------------------------------------ user functions


def absmax(arrays: Sequence[NDArray[Any]], weights: NDArray[np.float64]) -> NDArray[Any]:
    stack = np.stack(arrays)
    index = np.abs(stack).argmax(axis=0)
    result: NDArray[Any] = np.take_along_axis(stack, index[None], axis=0)[0]
    return result


def test_custom_function_gets_whole_tensors_and_weights() -> None:
    seen: list[tuple[tuple[int, ...], str, list[float]]] = []

    def spy(arrays: Sequence[NDArray[Any]], weights: NDArray[np.float64]) -> NDArray[Any]:
        seen.append((arrays[0].shape, arrays[0].dtype.name, weights.tolist()))
        return absmax(arrays, weights)

    rng = np.random.default_rng(11)
    states = [
        ModelState(
            {
                "w": rng.standard_normal((2, 3)).astype(np.float32),
                "b": bfloat16_from_float32(rng.standard_normal(4).astype(np.float32)),
                "n": np.array(i, np.int64),
            },
            bfloat16=["b"],
        )
        for i in range(3)
    ]
    merged = merge(states, [1, 2, 3], Custom(fn=spy))
    assert sorted(seen) == [((2, 3), "float32", [1, 2, 3]), ((4,), "float32", [1, 2, 3])]
    assert merged["w"].tolist() == absmax([s["w"] for s in states], np.ones(3)).tolist()
    assert merged.dtype("b") == "bfloat16"
    assert merged["n"].tolist() == 1


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (
            lambda arrays, w: arrays[0].astype(np.float64),
            r"returned float64\[2, 3\] for tensor 'w'",
        ),
        (lambda arrays, w: arrays[0].reshape(-1), r"returned float32\[6\] for tensor 'w'"),
        (lambda arrays, w: arrays[0].tolist(), "returned list for tensor 'w'"),
    ],
)
def test_custom_function_results_are_validated(fn: Any, message: str) -> None:
    states = [ModelState({"w": np.zeros((2, 3), np.float32)}) for _ in range(2)]
    with pytest.raises(ValueError, match=message):
        merge(states, None, Custom(fn=fn))


# ------------------------------------------------------------------------------ registry


def test_registry_names_and_errors() -> None:
    assert sorted(METHODS) == sorted(
        ["mean", "coordmedian", "geomedian", "trimmedmean", "krum", "multikrum"]
    )
    assert method_named("trimmedmean", trim_fraction=0.2) == TrimmedMean(trim_fraction=0.2)
    with pytest.raises(
        UnknownMethodError, match="unknown merge method 'median'; valid: coordmedian, geomedian"
    ) as err:
        method_named("median")
    assert isinstance(err.value, ValueError)
    assert isinstance(err.value, ConfigError)
    with pytest.raises(ConfigError, match="has no parameter 'f'"):
        method_named("krum", f=1)
    with pytest.raises(ValueError, match="unknown merge method"):
        merge_arrays([np.zeros(1)], None, "average")


@pytest.mark.parametrize(
    ("method", "count", "message"),
    [
        (Krum(byzantine_max=2), 4, "needs at least 5 contributions"),
        (MultiKrum(byzantine_max=1, selected=5), 4, "cannot select 5"),
        (TrimmedMean(trim_fraction=0.5), 4, r"in \[0, 0.5\)"),
        (GeoMedian(tolerance=0.0), 2, "tolerance > 0"),
    ],
)
def test_methods_check_their_parameters(method: Any, count: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        merge_arrays([np.zeros(2)] * count, None, method)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([1.0, 0.0], "positive finite"),
        ([1.0, float("nan")], "positive finite"),
        ([1.0], "1 weights for 2"),
        ([1e308, 1e308], "sum overflows"),
    ],
)
def test_weights_are_validated(weights: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        merge_arrays([np.zeros(2), np.ones(2)], weights)


def test_states_must_share_a_layout() -> None:
    with pytest.raises(ValueError, match="state 1 differs"):
        merge([ModelState({"x": np.zeros(2)}), ModelState({"x": np.zeros(3)})])
    with pytest.raises(ValueError, match="at least one state"):
        merge([])
