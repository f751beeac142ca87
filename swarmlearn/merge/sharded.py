"""Global methods over shards: geometric median and Krum as pure steps a round driver runs.

Theory of operation
-------------------
An owner holds all N contributions to its range (a :class:`RangeStack`: N x range bytes, the
price of a method whose result depends on whole-model distances; a central merger would hold
N x model). The methods need only a few numbers per contributor from each shard:

Geometric median (weighted Weiszfeld), per iteration t::

    owners:  z_0 = weighted mean of the range            (geomedian_start)
             partials_i = (sum (x_k - z)^2 for each k, sum z^2, sum (z - z_prev)^2)
    driver:  total = partials_0 + partials_1 + ...        (sum_partials, in owner order)
             d_k = sqrt(total.distance_sq[k]); f = sum w_k d_k
             stop?  (GeoMedianDriver.observe: converged, stagnated, oscillating, cap)
             beta_k = w_k / max(d_k, eps * max_j d_j)
    owners:  z = sum beta_k x_k / sum beta_k over the range, and the partials for the new z
             (geomedian_update, one fused pass)
    ...      when the driver stops, each owner writes its z (write)

Krum: each owner computes its range's N x N matrix of squared pairwise distances
(:meth:`RangeStack.krum_distances`); the driver sums the matrices in owner order and selects
(:func:`krum_select`); each owner writes the weighted mean of the selected contributions.

Sums are float64, by numpy's pairwise summation over each piece (no BLAS, so no threads and no
machine-dependent kernels), then in piece order, then in owner order. Per-shard partials are
grouped differently for different shard counts, so the geometric median of k shards equals the
whole-array one within the stopping tolerance; Krum's selection (and then the merged bytes) is
the same unless two scores tie to rounding. For one plan every participant gets the same bytes:
each range is computed by its owner only.
Integer and bool tensors follow the rules of :mod:`swarmlearn.merge.kernels` (over all
contributions for the geometric median, over the selected ones for Krum).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from swarmlearn.merge.dtypes import bfloat16_to_float32, kind, store_float, to_compute
from swarmlearn.merge.kernels import WeightSet, int_rule, merge_discrete
from swarmlearn.merge.manifest import Layout
from swarmlearn.merge.methods import Custom, GeoMedian, Krum, Method, method_scope
from swarmlearn.merge.pieces import Piece, call_custom, merge_piece, zero_gaps

#: Relative change of the objective below which it counts as unchanged.
OBJECTIVE_RTOL = 1e-12
#: Relative difference of two step lengths below which they count as equal.
STEP_RTOL = 1e-9


@dataclass(frozen=True, eq=False)
class GeoPartials:
    """One shard's contribution to a Weiszfeld iteration (all sums over the shard's floats)."""

    distance_sq: NDArray[np.float64]  # (N,): sum (x_k - z)^2
    estimate_sq: float  # sum z^2
    moved_sq: float  # sum (z - z_previous)^2; 0 for the start


def sum_partials(parts: Sequence[GeoPartials]) -> GeoPartials:
    """Add shards' partials in the given (owner) order."""
    distance = np.array(parts[0].distance_sq, dtype=np.float64)
    estimate, moved = parts[0].estimate_sq, parts[0].moved_sq
    for part in parts[1:]:
        distance += part.distance_sq
        estimate += part.estimate_sq
        moved += part.moved_sq
    return GeoPartials(distance, estimate, moved)


class StopReason(enum.Enum):
    CONVERGED = "converged"
    STAGNATED = "stagnated"
    OSCILLATING = "oscillating"
    ITERATIONS = "iterations"


class GeoMedianDriver:
    """The scalar side of Weiszfeld: from summed partials to the next weights, or a stop.

    ``observe`` takes the partials of the start, then of each update. It returns the
    ``beta`` weights for the next update, or ``None`` when the iteration stops, with
    ``stop_reason`` set. Stops, checked in this order after each update (f = sum w_k d_k the
    objective, s the step length ||z_t - z_{t-1}||):

    - CONVERGED: s <= ``tolerance`` * ||z||;
    - OSCILLATING: f is back to its value two updates before and s equals the previous step
      (a two-cycle A -> B -> A);
    - STAGNATED: f decreased by less than 1e-12 relative *and* s did not shrink: rounding
      noise, no more progress to make;
    - ITERATIONS: ``iterations_max`` updates done.

    The estimate kept is always the last one.
    """

    def __init__(self, weights: WeightSet, method: GeoMedian) -> None:
        self._weights = weights.values
        self._method = method
        self.iterations = 0
        self.objectives: list[float] = []
        self.steps: list[float] = []
        self.stop_reason: StopReason | None = None

    def observe(self, total: GeoPartials) -> NDArray[np.float64] | None:
        if self.stop_reason is not None:
            raise ValueError("the geometric median already stopped")
        distances = np.sqrt(total.distance_sq)
        objective = 0.0
        for weight, distance in zip(self._weights.tolist(), distances.tolist(), strict=True):
            objective += weight * distance
        step = math.sqrt(total.moved_sq)
        if self.objectives:
            self.iterations += 1
            self.stop_reason = self._stop(objective, step, math.sqrt(total.estimate_sq))
        elif objective == 0.0:
            self.stop_reason = StopReason.CONVERGED
        elif self._method.iterations_max == 0:
            self.stop_reason = StopReason.ITERATIONS
        self.objectives.append(objective)
        self.steps.append(step)
        if self.stop_reason is not None:
            return None
        floor = self._method.eps * float(distances.max())
        return self._weights / np.maximum(distances, floor)

    def _stop(self, objective: float, step: float, norm: float) -> StopReason | None:
        if step <= self._method.tolerance * norm:
            return StopReason.CONVERGED
        previous_step = self.steps[-1]
        if len(self.objectives) >= 3:
            back_again = abs(objective - self.objectives[-2]) <= OBJECTIVE_RTOL * objective
            if back_again and abs(step - previous_step) <= STEP_RTOL * step:
                return StopReason.OSCILLATING
        stalled = objective >= self.objectives[-1] * (1.0 - OBJECTIVE_RTOL)
        if stalled and len(self.objectives) >= 2 and step >= previous_step:
            return StopReason.STAGNATED
        if self.iterations >= self._method.iterations_max:
            return StopReason.ITERATIONS
        return None


def krum_scores(distances_sq: NDArray[np.float64], byzantine_max: int) -> list[float]:
    """score_k = sum of the N - f - 2 smallest squared distances from k to the others."""
    n = len(distances_sq)
    neighbours = n - byzantine_max - 2
    scores = []
    for k in range(n):
        others = sorted(float(distances_sq[k, j]) for j in range(n) if j != k)
        score = 0.0
        for value in others[:neighbours]:
            score += value
        scores.append(score)
    return scores


def krum_select(
    distances_sq: NDArray[np.float64], byzantine_max: int, selected: int
) -> tuple[int, ...]:
    """The ``selected`` lowest-scored participants (ties: lower index), in ascending order."""
    scores = krum_scores(distances_sq, byzantine_max)
    ranked = sorted(range(len(scores)), key=lambda k: (scores[k], k))
    return tuple(sorted(ranked[:selected]))


def _sum_of_squares(values: NDArray[np.float64]) -> float:
    """Sum of squares by numpy's pairwise summation (squares ``values`` in place; no BLAS)."""
    np.multiply(values, values, out=values)
    return float(np.add.reduce(values))


def _widened(column: NDArray[Any], dtype: str) -> NDArray[Any]:
    """The column as numpy floats (bfloat16 bits widened to float32)."""
    return bfloat16_to_float32(column) if dtype == "bfloat16" else column


class RangeStack:
    """All N contributions to one owner's range, and the global methods' per-shard steps."""

    def __init__(
        self,
        layout: Layout,
        start_byte: int,
        stop_byte: int,
        pieces: Iterable[Piece],
        weights: WeightSet,
    ) -> None:
        self.layout = layout
        self.start_byte = start_byte
        self.stop_byte = stop_byte
        self.pieces = list(pieces)
        self.weights = weights
        self._floats = [p for p in self.pieces if kind(p.spec.dtype) == "float"]
        longest = max((p.count for p in self._floats), default=0)
        self._scratch = np.empty(longest, np.float64)
        self._fresh = np.empty(longest, np.float64)
        self._estimate: list[NDArray[np.float64]] = []

    # ---------------------------------------------------------------- geometric median

    def _weighted_sum(self, piece: Piece, factors: NDArray[np.float64], out: NDArray[Any]) -> None:
        scratch = self._scratch[: piece.count]
        for k, column in enumerate(piece.columns):
            target = out if k == 0 else scratch
            np.multiply(
                _widened(column, piece.spec.dtype), factors[k], out=target, dtype=np.float64
            )
            if k:
                np.add(out, target, out=out)

    def _partials(self, update: NDArray[np.float64] | None) -> GeoPartials:
        distance = np.zeros(self.weights.count, np.float64)
        estimate_sq = moved_sq = 0.0
        for piece, z in zip(self._floats, self._estimate, strict=True):
            scratch = self._scratch[: piece.count]
            if update is not None:
                fresh = self._fresh[: piece.count]
                self._weighted_sum(piece, update, fresh)
                np.subtract(fresh, z, out=scratch)
                moved_sq += _sum_of_squares(scratch)
                np.copyto(z, fresh)
            np.multiply(z, z, out=scratch)
            estimate_sq += float(np.add.reduce(scratch))
            for k, column in enumerate(piece.columns):
                np.subtract(_widened(column, piece.spec.dtype), z, out=scratch, dtype=np.float64)
                distance[k] += _sum_of_squares(scratch)
        return GeoPartials(distance, estimate_sq, moved_sq)

    def geomedian_start(self) -> GeoPartials:
        """Set the estimate to the weighted mean of the range; return its partials."""
        factors = self.weights.factors(np.dtype(np.float64))
        self._estimate = [np.empty(p.count, np.float64) for p in self._floats]
        for piece, z in zip(self._floats, self._estimate, strict=True):
            self._weighted_sum(piece, factors, z)
        return self._partials(None)

    def geomedian_update(self, betas: NDArray[np.float64]) -> GeoPartials:
        """Move the estimate to sum beta_k x_k / sum beta_k; return the new partials."""
        if not self._estimate and self._floats:
            raise ValueError("geomedian_update before geomedian_start")
        total = 0.0
        for beta in betas.tolist():
            total += beta
        return self._partials(np.asarray(betas, np.float64) / total)

    # ---------------------------------------------------------------------------- Krum

    def krum_distances(self) -> NDArray[np.float64]:
        """This range's N x N squared pairwise distances over the float tensors."""
        n = self.weights.count
        upper = np.zeros((n, n), np.float64)
        for piece in self._floats:
            scratch = self._scratch[: piece.count]
            columns = [_widened(c, piece.spec.dtype) for c in piece.columns]
            for i in range(n):
                for j in range(i + 1, n):
                    np.subtract(columns[i], columns[j], out=scratch, dtype=np.float64)
                    upper[i, j] += _sum_of_squares(scratch)
        return upper + upper.T

    # --------------------------------------------------------------------------- result

    def write(self, method: Method, out: memoryview, selected: Sequence[int] | None = None) -> None:
        """Write the range's merged bytes into ``out`` (``stop_byte - start_byte`` long)."""
        if len(out) != self.stop_byte - self.start_byte:
            raise ValueError(
                f"out holds {len(out)} bytes, the range is {self.stop_byte - self.start_byte}"
            )
        zero_gaps(self.layout, self.start_byte, self.stop_byte, out)
        if isinstance(method, Krum):
            if selected is None:
                raise ValueError("krum needs the selected participants (krum_select)")
            self._write_subset(method, out, selected)
        elif isinstance(method, GeoMedian):
            self._write_estimate(method, out)
        elif isinstance(method, Custom) and method_scope(method) == "global":
            self._write_custom(method, out)
        else:
            for piece in self.pieces:
                merge_piece(piece, method, self.weights, piece.out_view(out))

    def _write_subset(self, method: Method, out: memoryview, selected: Sequence[int]) -> None:
        weights = self.weights.subset(selected)
        for piece in self.pieces:
            columns = [piece.columns[k] for k in selected]
            merge_piece(piece, method, weights, piece.out_view(out), columns)

    def _write_estimate(self, method: Method, out: memoryview) -> None:
        if not self._estimate and self._floats:
            raise ValueError("write before the geometric median ran")
        estimates = iter(self._estimate)
        for piece in self.pieces:
            target = piece.out_view(out)
            if kind(piece.spec.dtype) == "float":
                store_float(next(estimates), piece.spec.dtype, target)
            else:
                rule = int_rule(piece.spec.name, method.counter_suffixes)
                merge_discrete(piece.columns, piece.spec.dtype, rule, self.weights, target)

    def _write_custom(self, method: Custom, out: memoryview) -> None:
        by_entry: dict[int, list[Piece]] = {}
        for piece in self.pieces:
            by_entry.setdefault(piece.segment.entry, []).append(piece)
        for group in by_entry.values():
            spec = group[0].spec
            first = group[0]
            if kind(spec.dtype) != "float":
                for piece in group:
                    merge_piece(piece, method, self.weights, piece.out_view(out))
                continue
            if sum(p.count for p in group) != spec.count:
                raise ValueError(
                    f"custom merge function for tensor {spec.name!r} needs whole tensors: plan "
                    "with granularity='tensor' or declare the function coordinatewise=True"
                )
            arrays = [
                to_compute(np.concatenate([p.columns[k] for p in group]), spec.dtype).reshape(
                    spec.shape
                )
                for k in range(self.weights.count)
            ]
            result = call_custom(method, spec.name, arrays, self.weights)
            target = np.frombuffer(out, first.out_view(out).dtype, spec.count, first.out_offset)
            store_float(result.reshape(-1), spec.dtype, target)


def drive_geomedian(
    stacks: Sequence[RangeStack],
    method: GeoMedian,
    map_fn: Callable[..., Iterable[Any]] = map,
) -> GeoMedianDriver:
    """Run the geometric median over in-process shards (``map_fn`` may run them in threads)."""
    driver = GeoMedianDriver(stacks[0].weights, method)
    parts = list(map_fn(RangeStack.geomedian_start, stacks))
    betas = driver.observe(sum_partials(parts))
    while betas is not None:
        parts = list(map_fn(RangeStack.geomedian_update, stacks, [betas] * len(stacks)))
        betas = driver.observe(sum_partials(parts))
    return driver


def drive_krum(
    stacks: Sequence[RangeStack],
    method: Krum,
    map_fn: Callable[..., Iterable[Any]] = map,
) -> tuple[int, ...]:
    """Sum the shards' distance matrices in owner order and select."""
    matrices = list(map_fn(RangeStack.krum_distances, stacks))
    total = np.array(matrices[0], dtype=np.float64)
    for matrix in matrices[1:]:
        total += matrix
    n = stacks[0].weights.count
    return krum_select(total, method.byzantine_max, method.selected_count(n))
