"""Global methods over shards: geometric median and Krum as pure steps a round driver runs.

Theory of operation
-------------------
An owner holds all N contributions to its range (a :class:`RangeStack`: N x range bytes, the
price of a method whose result depends on whole-model distances; a central merger would hold
N x model). The methods need only a few numbers per contributor from each shard:

Geometric median (weighted Weiszfeld), per iteration t::

    owners:  z_0 = weighted mean of the range            (geomedian_start)
             rows_i = per piece: (sum (x_k - z)^2 for each k, sum z^2, sum (z - z_prev)^2)
    driver:  total = fold of every owner's rows           (sum_partials: owner order, then
                                                           piece order; a left fold)
             d_k = sqrt(total.distance_sq[k]); f = sum w_k d_k
             stop?  (GeoMedianDriver.observe: converged, stagnated, oscillating, cap)
             beta_k = w_k / max(d_k, eps * max_j d_j)
    owners:  z = sum beta_k x_k / sum beta_k over the range, and the rows for the new z
             (geomedian_update, one fused pass)
    ...      when the driver stops, each owner writes its z (write)

Krum: each owner computes, per piece, the N x N squared pairwise distances (upper triangle
rows, :meth:`RangeStack.krum_distances`); the driver folds every owner's rows in order
(:func:`krum_total`) and selects (:func:`krum_select`); each owner writes the weighted mean
of the selected contributions.

Determinism: a row is one piece's sums, float64, by numpy's pairwise summation over the piece
(no BLAS, so no threads and no machine-dependent kernels); the total is a left fold over all
rows in layout order. A piece is one tensor's part of one chunk, so with a plan that splits no
chunk (``plan_shards(..., granularity="chunk")``, what sync rounds use) the rows do not depend
on the plan: P owners and one whole-state merge of the same chunk size
(:func:`~swarmlearn.merge.merge.merge` with ``chunk_bytes``) fold the same numbers in the same
order, stop at the same iteration and write the same bytes. A
plan that splits chunks groups differently and agrees within the stopping tolerance (Krum:
the same selection unless two scores tie to rounding). In a round every participant folds the
same rows (each owner's come from that owner alone), so all decide alike.
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
from swarmlearn.merge.plan import Shard, segments_between

#: Relative change of the objective below which it counts as unchanged.
OBJECTIVE_RTOL = 1e-12
#: Relative difference of two step lengths below which they count as equal.
STEP_RTOL = 1e-9


@dataclass(frozen=True, eq=False)
class GeoPartials:
    """A Weiszfeld iteration's totals over every float (the fold of every owner's rows)."""

    distance_sq: NDArray[np.float64]  # (N,): sum (x_k - z)^2
    estimate_sq: float  # sum z^2
    moved_sq: float  # sum (z - z_previous)^2; 0 for the start


def geo_width(participants: int) -> int:
    """Numbers per piece in a geometric-median row: N distances, sum z^2, sum (z - z')^2."""
    return participants + 2


def krum_width(participants: int) -> int:
    """Numbers per piece in a Krum row: the upper triangle of the N x N distances."""
    return participants * (participants - 1) // 2


def fold_rows(parts: Sequence[NDArray[np.float64]], width: int) -> NDArray[np.float64]:
    """The left fold ``((r_0 + r_1) + r_2) + ...`` of every row, ``parts`` in order."""
    total = np.zeros(width, np.float64)
    for part in parts:
        for row in np.asarray(part, np.float64).reshape(-1, width):
            np.add(total, row, out=total)
    return total


def sum_partials(parts: Sequence[NDArray[np.float64]], participants: int) -> GeoPartials:
    """Fold owners' geometric-median rows (owner order, each in piece order) into totals."""
    total = fold_rows(parts, geo_width(participants))
    return GeoPartials(total[:participants], float(total[-2]), float(total[-1]))


def krum_total(parts: Sequence[NDArray[np.float64]], participants: int) -> NDArray[np.float64]:
    """Fold owners' Krum rows (owner order, each in piece order) into the N x N matrix."""
    total = fold_rows(parts, krum_width(participants))
    matrix = np.zeros((participants, participants), np.float64)
    matrix[np.triu_indices(participants, 1)] = total
    return matrix + matrix.T


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

    def _partials(self, update: NDArray[np.float64] | None) -> NDArray[np.float64]:
        n = self.weights.count
        rows = np.zeros((len(self._floats), geo_width(n)), np.float64)
        for row, piece, z in zip(rows, self._floats, self._estimate, strict=True):
            scratch = self._scratch[: piece.count]
            if update is not None:
                fresh = self._fresh[: piece.count]
                self._weighted_sum(piece, update, fresh)
                np.subtract(fresh, z, out=scratch)
                row[n + 1] = _sum_of_squares(scratch)
                np.copyto(z, fresh)
            np.multiply(z, z, out=scratch)
            row[n] = float(np.add.reduce(scratch))
            for k, column in enumerate(piece.columns):
                np.subtract(_widened(column, piece.spec.dtype), z, out=scratch, dtype=np.float64)
                row[k] = _sum_of_squares(scratch)
        return rows

    def geomedian_start(self) -> NDArray[np.float64]:
        """Set the estimate to the weighted mean of the range; return its rows (per float
        piece: the N squared distances, sum z^2, 0)."""
        factors = self.weights.factors(np.dtype(np.float64))
        self._estimate = [np.empty(p.count, np.float64) for p in self._floats]
        for piece, z in zip(self._floats, self._estimate, strict=True):
            self._weighted_sum(piece, factors, z)
        return self._partials(None)

    def geomedian_update(self, betas: NDArray[np.float64]) -> NDArray[np.float64]:
        """Move the estimate to sum beta_k x_k / sum beta_k; return the new rows."""
        if not self._estimate and self._floats:
            raise ValueError("geomedian_update before geomedian_start")
        total = 0.0
        for beta in betas.tolist():
            total += beta
        return self._partials(np.asarray(betas, np.float64) / total)

    # ---------------------------------------------------------------------------- Krum

    def krum_distances(self) -> NDArray[np.float64]:
        """Per float piece, the upper triangle of its N x N squared pairwise distances."""
        n = self.weights.count
        rows = np.zeros((len(self._floats), krum_width(n)), np.float64)
        for row, piece in zip(rows, self._floats, strict=True):
            scratch = self._scratch[: piece.count]
            columns = [_widened(c, piece.spec.dtype) for c in piece.columns]
            cell = 0
            for i in range(n):
                for j in range(i + 1, n):
                    np.subtract(columns[i], columns[j], out=scratch, dtype=np.float64)
                    row[cell] = _sum_of_squares(scratch)
                    cell += 1
        return rows

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


def float_piece_count(layout: Layout, shard: Shard) -> int:
    """How many rows an owner of ``shard`` sends per step: its float pieces (one per float
    tensor's part of each chunk in the range), which every participant can count."""
    count = 0
    for chunk in shard.chunks(layout):
        start, stop = layout.chunk_span(chunk)
        low, high = max(start, shard.start_byte), min(stop, shard.stop_byte)
        segments = segments_between(layout, low, high)
        count += sum(1 for s in segments if kind(layout.tensors[s.entry].dtype) == "float")
    return count


class GlobalSteps:
    """One owner's side of a global method, step by step (sans-IO): its rows out, every
    owner's rows in; the round driver carries the rows between owners.

    ``start()`` gives step 0's rows; ``advance(parts)`` takes every owner's rows of the
    current step (in owner order) and gives the next step's rows, or None when the method is
    done (then ``write``). Every owner that folds the same parts decides the same.
    """

    def __init__(self, stack: RangeStack, method: GeoMedian | Krum) -> None:
        self.stack = stack
        self.method = method
        self.participants = stack.weights.count
        self.driver = (
            GeoMedianDriver(stack.weights, method) if isinstance(method, GeoMedian) else None
        )
        self.width = geo_width(self.participants) if self.driver else krum_width(self.participants)
        self.step = 0
        self.selected: tuple[int, ...] | None = None
        self.finished = False

    def start(self) -> NDArray[np.float64]:
        return self.stack.geomedian_start() if self.driver else self.stack.krum_distances()

    def advance(self, parts: Sequence[NDArray[np.float64]]) -> NDArray[np.float64] | None:
        if self.finished:
            raise ValueError("the global method is done already")
        if self.driver is None:
            assert isinstance(self.method, Krum)
            total = krum_total(parts, self.participants)
            count = self.method.selected_count(self.participants)
            self.selected = krum_select(total, self.method.byzantine_max, count)
            self.finished = True
            return None
        betas = self.driver.observe(sum_partials(parts, self.participants))
        if betas is None:
            self.finished = True
            return None
        self.step += 1
        return self.stack.geomedian_update(betas)

    def write(self, out: memoryview) -> None:
        if not self.finished:
            raise ValueError("the global method is not done yet")
        self.stack.write(self.method, out, self.selected)

    def describe(self) -> str:
        """How it ended, for a progress line."""
        if self.driver is None:
            return f"selected {list(self.selected or ())}"
        reason = self.driver.stop_reason.value if self.driver.stop_reason else "running"
        return f"{self.driver.iterations} iterations, {reason}"


def drive_geomedian(
    stacks: Sequence[RangeStack],
    method: GeoMedian,
    map_fn: Callable[..., Iterable[Any]] = map,
) -> GeoMedianDriver:
    """Run the geometric median over in-process shards (``map_fn`` may run them in threads)."""
    driver = GeoMedianDriver(stacks[0].weights, method)
    n = stacks[0].weights.count
    parts = list(map_fn(RangeStack.geomedian_start, stacks))
    betas = driver.observe(sum_partials(parts, n))
    while betas is not None:
        parts = list(map_fn(RangeStack.geomedian_update, stacks, [betas] * len(stacks)))
        betas = driver.observe(sum_partials(parts, n))
    return driver


def drive_krum(
    stacks: Sequence[RangeStack],
    method: Krum,
    map_fn: Callable[..., Iterable[Any]] = map,
) -> tuple[int, ...]:
    """Fold the shards' distance rows in owner order and select."""
    n = stacks[0].weights.count
    total = krum_total(list(map_fn(RangeStack.krum_distances, stacks)), n)
    return krum_select(total, method.byzantine_max, method.selected_count(n))
