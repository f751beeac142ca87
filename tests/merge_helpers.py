"""Strategies, random states and plain-numpy reference implementations for the merge tests."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np
from hypothesis import strategies as st
from numpy.typing import NDArray

from swarmlearn.merge import DTYPE_NAMES, ModelState, bfloat16_from_float32

Spec = tuple[str, str, tuple[int, ...]]

shapes = st.one_of(
    st.just(()),
    st.lists(st.integers(0, 6), min_size=1, max_size=2).map(tuple),
    st.lists(st.integers(1, 3), min_size=3, max_size=3).map(tuple),
)


@st.composite
def specs(draw: st.DrawFn, max_tensors: int = 4, dtypes: Sequence[str] = DTYPE_NAMES) -> list[Spec]:
    count = draw(st.integers(1, max_tensors))
    result = []
    for index in range(count):
        dtype = draw(st.sampled_from(list(dtypes)))
        counter = dtype.startswith(("int", "uint")) and draw(st.booleans())
        name = f"layer{index}.num_batches_tracked" if counter else f"layer{index}.w"
        result.append((name, dtype, draw(shapes)))
    return result


weight_values = st.one_of(
    st.integers(1, 100).map(float),
    st.floats(0.01, 1000.0, allow_nan=False, allow_infinity=False),
)


def weight_lists(count: int) -> st.SearchStrategy[list[float]]:
    return st.lists(weight_values, min_size=count, max_size=count)


def random_array(rng: np.random.Generator, dtype: str, shape: tuple[int, ...], wide: bool) -> Any:
    size = math.prod(shape)
    if dtype == "bool":
        return (rng.random(size) < 0.5).reshape(shape)
    if dtype.startswith(("int", "uint")):
        info = np.iinfo(np.dtype(dtype))
        low, high = (int(info.min), int(info.max)) if wide else (max(int(info.min), -50), 50)
        return rng.integers(low, high, size, dtype=np.dtype(dtype), endpoint=True).reshape(shape)
    values = rng.standard_normal(size) * (100.0 if wide else 1.0)
    if dtype == "bfloat16":
        return bfloat16_from_float32(values.astype(np.float32)).reshape(shape)
    return values.astype(np.dtype(dtype)).reshape(shape)


def random_states(layout: Sequence[Spec], count: int, seed: int) -> list[ModelState]:
    """``count`` states; some draws copy contribution 0 into 1 (exact ties) or use wide ranges."""
    rng = np.random.default_rng(seed)
    wide = bool(rng.random() < 0.25)
    states = []
    for _ in range(count):
        arrays = {name: random_array(rng, dtype, shape, wide) for name, dtype, shape in layout}
        states.append(arrays)
    if count > 1 and rng.random() < 0.3:
        states[1] = {name: array.copy() for name, array in states[0].items()}
    bf16 = [name for name, dtype, _ in layout if dtype == "bfloat16"]
    return [ModelState(arrays, bfloat16=bf16) for arrays in states]


def as_compute(state: ModelState, name: str) -> NDArray[Any]:
    """A float tensor's values as numpy floats (bfloat16 widened to float32)."""
    array = state[name]
    if state.dtype(name) == "bfloat16":
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array


# ------------------------------------------------------------------ plain reference code


def bf16_round_reference(value: float) -> int:
    """Round a float32 value to bfloat16 bits, nearest-even, by comparing the two neighbours."""
    bits: int = struct.unpack("<I", struct.pack("<f", value))[0]
    if value != value:
        return (bits >> 16) | 0x0040
    if math.isinf(value):
        return bits >> 16
    low = bits & 0xFFFF0000
    high = low + 0x10000

    def exact(word: int) -> Fraction:
        if word & 0x7FFFFFFF == 0x7F800000:
            return Fraction(2**128) * (-1 if word >> 31 else 1)
        return Fraction(struct.unpack("<f", struct.pack("<I", word))[0])

    target = Fraction(value)
    below, above = abs(target - exact(low)), abs(exact(high) - target)
    if below < above or (below == above and not (low >> 16) & 1):
        return low >> 16
    return (high >> 16) & 0xFFFF


def weighted_lower_median(values: NDArray[Any], weights: NDArray[Any]) -> Any:
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(np.array([Fraction(w) for w in weights[order]], dtype=object))
    total = cumulative[-1]
    index = next(i for i, c in enumerate(cumulative) if 2 * c >= total)
    return values[order][index]


def trimmed_reference(values: NDArray[Any], weights: NDArray[Any], trim: int) -> float:
    order = np.argsort(values, kind="stable")
    keep = order[trim : len(values) - trim]
    return float(np.average(values[keep].astype(np.float64), weights=weights[keep]))


def int_mean_reference(values: Sequence[int], weights: Sequence[float]) -> int:
    exact = [Fraction(w) for w in weights]
    return round(sum(f * v for f, v in zip(exact, values, strict=True)) / sum(exact))


def majority_reference(values: Sequence[bool], weights: Sequence[float]) -> bool:
    exact = [Fraction(w) for w in weights]
    return 2 * sum(f for f, v in zip(exact, values, strict=True) if v) > sum(exact)


def weiszfeld_reference(
    points: NDArray[np.float64], weights: NDArray[np.float64], eps: float
) -> Any:
    """Plain weighted Weiszfeld on row vectors (distances floored at eps * the largest one)."""
    z = np.average(points, axis=0, weights=weights)
    for _ in range(100_000):
        distances = np.linalg.norm(points - z, axis=1)
        beta = weights / np.maximum(distances, eps * distances.max())
        fresh = beta @ points / beta.sum()
        if np.linalg.norm(fresh - z) <= 1e-14 * np.linalg.norm(z):
            return fresh
        z = fresh
    return z


def krum_reference(points: NDArray[np.float64], byzantine_max: int, selected: int) -> list[int]:
    n = len(points)
    squared = ((points[:, None, :] - points[None, :, :]) ** 2).sum(axis=2)
    scores = [np.sort(np.delete(squared[k], k))[: n - byzantine_max - 2].sum() for k in range(n)]
    order = sorted(range(n), key=lambda k: (scores[k], k))
    return sorted(order[:selected])
