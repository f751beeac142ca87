"""Coordinate kernels: merge one piece of one tensor from its N contributions.

Theory of operation
-------------------
Every kernel here computes each output element from that element's N input values and the
weights alone, with elementwise numpy operations (multiply, add, divide, compare, copy) applied
in a fixed order: participant index 0, 1, ..., N-1. IEEE elementwise operations are correctly
rounded, so an element's result does not depend on where the piece starts or ends, on SIMD
width, or on the machine. That is what makes a tensor merged whole, merged in shards, or merged
chunk by chunk as they arrive produce the same bytes.

Rules, per dtype:

- float (mean): ``acc = x_0 * a_0; acc += x_k * a_k`` for k = 1..N-1 in the compute dtype
  (float64 for float64, float32 otherwise), with ``a_k = w_k / W`` computed in float64
  (``W`` summed in participant order) and cast to the compute dtype; then rounded to the
  tensor's dtype (round-to-nearest-even; bfloat16 by
  :func:`~swarmlearn.merge.dtypes.bfloat16_from_float32`).
- float (coordmedian): the lower weighted median, the smallest value v with
  ``2 * weight(x <= v) >= W``; exact (a value is selected, never computed).
- float (trimmedmean): rank by value, ties by participant index; drop ``t`` lowest and ``t``
  highest; ``sum(a_k x_k) / sum(a_k)`` over the kept, in participant order.
- int, counters (name ends with a counter suffix): the maximum.
- int, others: the weighted mean rounded to the nearest integer, ties to even, computed
  exactly with integer weights proportional to the given ones (int64, or Python ints when
  int64 could overflow). The result keeps the tensor's dtype.
- bool: weighted majority, ``2 * weight(True) > W``; a tie is False.

Weights are positive finite numbers. Comparisons of weight sums use exact integer weights
(:attr:`WeightSet.exact`) whenever their sum is below 2**53, so they are exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property, reduce
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from swarmlearn.merge.dtypes import compute_dtype, kind, store_float, to_compute

BLOCK_ELEMENTS = 1 << 16
FOLD_BLOCK_BYTES = 1024 * 1024

IntRule = Literal["max", "mean"]


@dataclass(frozen=True, eq=False)
class WeightSet:
    """Validated weights and the derived forms the kernels use."""

    values: NDArray[np.float64]

    @classmethod
    def of(cls, weights: Sequence[float] | NDArray[Any], count: int) -> WeightSet:
        values = np.array(weights, dtype=np.float64).reshape(-1)
        if len(values) != count:
            raise ValueError(f"{len(values)} weights for {count} contributions")
        if not np.all(np.isfinite(values) & (values > 0)):
            raise ValueError(f"weights must be positive finite numbers, got {values.tolist()}")
        result = cls(values)
        if not math.isfinite(result.total):
            raise ValueError("the weights' sum overflows float64; scale them down")
        return result

    def subset(self, indices: Sequence[int]) -> WeightSet:
        return WeightSet(self.values[list(indices)])

    @property
    def count(self) -> int:
        return len(self.values)

    @cached_property
    def total(self) -> float:
        total = 0.0
        for value in self.values.tolist():
            total += value
        return total

    def factors(self, dtype: np.dtype[Any]) -> NDArray[Any]:
        """``w_k / W`` in float64 (W summed in participant order), cast to ``dtype``."""
        return (self.values / self.total).astype(dtype)

    @cached_property
    def exact(self) -> tuple[int, ...]:
        """Coprime integers exactly proportional to the weights."""
        ratios = [Fraction(value) for value in self.values.tolist()]
        denominator = reduce(math.lcm, (r.denominator for r in ratios), 1)
        integers = [int(r * denominator) for r in ratios]
        divisor = reduce(math.gcd, integers)
        return tuple(i // divisor for i in integers)

    @cached_property
    def rank(self) -> NDArray[np.float64]:
        """Weights for comparisons: the exact integers when their sum is below 2**53."""
        if sum(self.exact) < 2**53:
            return np.array(self.exact, dtype=np.float64)
        return self.values / self.total


def int_rule(name: str, counter_suffixes: Sequence[str]) -> IntRule:
    return "max" if any(name.endswith(suffix) for suffix in counter_suffixes) else "mean"


# ------------------------------------------------------------------------------------ floats


def fold(
    acc: NDArray[Any],
    values: NDArray[Any],
    dtype: str,
    factor: Any,
    first: bool,
    scratch: NDArray[Any],
) -> None:
    """One step of the mean: ``acc = values * factor`` (first) or ``acc += values * factor``.

    ``acc`` is a compute-dtype buffer as long as ``values``; ``scratch`` a compute-dtype buffer
    of any length: later participants are folded in blocks of that length (the result does not
    depend on it).
    """
    if first:
        if dtype == "bfloat16":
            np.left_shift(values, 16, out=acc.view(np.uint32), dtype=np.uint32)
            np.multiply(acc, factor, out=acc)
        else:
            np.multiply(values, factor, out=acc, dtype=acc.dtype)
        return
    step = len(scratch)
    for start in range(0, len(values), step):
        part = values[start : start + step]
        target = scratch[: len(part)]
        if dtype == "bfloat16":
            np.left_shift(part, 16, out=target.view(np.uint32), dtype=np.uint32)
            np.multiply(target, factor, out=target)
        else:
            np.multiply(part, factor, out=target, dtype=acc.dtype)
        window = acc[start : start + len(part)]
        np.add(window, target, out=window)


def mean_float(
    columns: Sequence[NDArray[Any]], dtype: str, weights: WeightSet, out: NDArray[Any]
) -> None:
    """Weighted mean of one float piece, written to ``out`` (the tensor's storage dtype)."""
    cdtype = compute_dtype(dtype)
    factors = weights.factors(cdtype)
    in_place = out.dtype == cdtype and out.flags.c_contiguous
    acc = out if in_place else np.empty(len(out), cdtype)
    scratch = np.empty(max(1, min(len(out), FOLD_BLOCK_BYTES // cdtype.itemsize)), cdtype)
    for k, column in enumerate(columns):
        fold(acc, column, dtype, factors[k], k == 0, scratch)
    if not in_place:
        store_float(acc, dtype, out)


def _blocks(count: int) -> range:
    return range(0, count, BLOCK_ELEMENTS)


def median_float(
    columns: Sequence[NDArray[Any]], dtype: str, weights: WeightSet, out: NDArray[Any]
) -> None:
    """Lower weighted median per coordinate (exact), written to ``out``."""
    rank = weights.rank.tolist()
    total = 0.0
    for value in rank:
        total += value
    count = len(out)
    for start in _blocks(count):
        stop = min(start + BLOCK_ELEMENTS, count)
        values = [to_compute(column[start:stop], dtype) for column in columns]
        size = stop - start
        best = np.zeros(size, values[0].dtype)
        found = np.zeros(size, bool)
        below = np.empty(size, np.float64)
        mask = np.empty(size, bool)
        better = np.empty(size, bool)
        for candidate in values:
            below.fill(0.0)
            for j, other in enumerate(values):
                np.less_equal(other, candidate, out=mask)
                np.add(below, rank[j], out=below, where=mask)
            np.greater_equal(below * 2.0, total, out=mask)
            np.less(candidate, best, out=better)
            np.logical_or(better, ~found, out=better)
            np.logical_and(better, mask, out=better)
            np.copyto(best, candidate, where=better)
            np.logical_or(found, mask, out=found)
        store_float(best, dtype, out[start:stop])


def trimmed_float(
    columns: Sequence[NDArray[Any]],
    dtype: str,
    weights: WeightSet,
    trim_count: int,
    out: NDArray[Any],
) -> None:
    """Trimmed weighted mean per coordinate, written to ``out``."""
    n = len(columns)
    factors = weights.factors(compute_dtype(dtype))
    count = len(out)
    for start in _blocks(count):
        stop = min(start + BLOCK_ELEMENTS, count)
        values = [to_compute(column[start:stop], dtype) for column in columns]
        size = stop - start
        num = np.zeros(size, factors.dtype)
        den = np.zeros(size, factors.dtype)
        term = np.empty(size, factors.dtype)
        ranks = np.empty(size, np.int32)
        mask = np.empty(size, bool)
        for k, candidate in enumerate(values):
            ranks.fill(0)
            for j, other in enumerate(values):
                if j != k:
                    compare = np.less_equal if j < k else np.less
                    compare(other, candidate, out=mask)
                    np.add(ranks, 1, out=ranks, where=mask)
            np.greater_equal(ranks, trim_count, out=mask)
            np.logical_and(mask, ranks < n - trim_count, out=mask)
            np.multiply(candidate, factors[k], out=term)
            np.add(num, term, out=num, where=mask)
            np.add(den, factors[k], out=den, where=mask)
        np.divide(num, den, out=num)
        store_float(num, dtype, out[start:stop])


# ------------------------------------------------------------------------ integers and bools


def _bound(columns: Sequence[NDArray[Any]]) -> int:
    if len(columns[0]) == 0:
        return 0
    return max(max(abs(int(c.min())), abs(int(c.max()))) for c in columns)


def mean_int(columns: Sequence[NDArray[Any]], weights: WeightSet, out: NDArray[Any]) -> None:
    """Exact weighted mean rounded half to even, in the tensor's integer dtype."""
    exact = weights.exact
    total = sum(exact)
    fits = total < 2**62 and _bound(columns) * total < 2**62
    dtype: Any = np.int64 if fits else object
    num = np.zeros(len(out), dtype)
    for factor, column in zip(exact, columns, strict=True):
        num += column.astype(dtype) * (np.int64(factor) if fits else factor)
    quotient = num // total
    twice_rest = (num - quotient * total) * 2
    up = (twice_rest > total) | ((twice_rest == total) & ((quotient & 1) == 1))
    result = quotient + up.astype(dtype)
    np.copyto(out, result.astype(out.dtype))


def max_int(columns: Sequence[NDArray[Any]], out: NDArray[Any]) -> None:
    np.copyto(out, columns[0])
    for column in columns[1:]:
        np.maximum(out, column, out=out)


def majority_bool(columns: Sequence[NDArray[Any]], weights: WeightSet, out: NDArray[Any]) -> None:
    """Weighted majority; an exact tie is False."""
    exact = weights.exact
    total = sum(exact)
    fits = total < 2**62
    votes = np.zeros(len(out), np.int64 if fits else object)
    for factor, column in zip(exact, columns, strict=True):
        votes += column.view(np.uint8).astype(bool).astype(votes.dtype) * factor
    np.copyto(out, votes * 2 > total)


def merge_discrete(
    columns: Sequence[NDArray[Any]],
    dtype: str,
    rule: IntRule,
    weights: WeightSet,
    out: NDArray[Any],
) -> None:
    """Merge an integer or bool piece by its rule (see the module docstring)."""
    if kind(dtype) == "bool":
        majority_bool(columns, weights, out)
    elif rule == "max":
        max_int(columns, out)
    else:
        mean_int(columns, weights, out)
