"""Merge methods as frozen configuration objects, and the registry that names them.

A method says *what* merge to run; the kernels (:mod:`swarmlearn.merge.kernels`) and the sharded
steps (:mod:`swarmlearn.merge.sharded`) say how. Three scopes decide how a method shards:

- ``fold``: the weighted mean, folded participant by participant into one accumulator;
- ``coordinate``: each output coordinate depends only on that coordinate's N values (coordinate
  median, trimmed mean, a user function declared ``coordinatewise``): merged region by region;
- ``global``: the result depends on whole-model distances (geometric median, Krum, a user
  function that needs whole tensors): owners exchange small per-shard partial sums.

Every method carries ``counter_suffixes``: integer tensors whose name ends with one of them are
counters merged with ``max``; other integer tensors get the rounded weighted mean (see
:mod:`swarmlearn.merge.kernels`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

import numpy as np
from numpy.typing import NDArray

from swarmlearn.errors import ConfigError

Scope = Literal["fold", "coordinate", "global"]

#: A user merge function: N arrays of one float tensor (same shape, in the compute dtype:
#: float64 for float64 tensors, float32 otherwise) and the N weights (float64, positive) in,
#: one array of that shape and dtype out.
MergeFn = Callable[[Sequence[NDArray[Any]], NDArray[np.float64]], NDArray[Any]]

DEFAULT_COUNTER_SUFFIXES = ("num_batches_tracked",)


class UnknownMethodError(ConfigError, ValueError):
    """A method name that is not in the registry (the message lists the valid ones)."""


@dataclass(frozen=True, kw_only=True)
class Method:
    """Base of every merge method."""

    name: ClassVar[str] = ""
    scope: ClassVar[Scope] = "fold"
    counter_suffixes: tuple[str, ...] = DEFAULT_COUNTER_SUFFIXES

    def check(self, participants: int) -> None:
        """Raise ``ValueError`` if the method cannot merge ``participants`` contributions."""
        if participants < 1:
            raise ValueError("a merge needs at least one contribution")


@dataclass(frozen=True, kw_only=True)
class Mean(Method):
    """Weighted mean: sum_k (w_k / W) * x_k, folded in participant order."""

    name: ClassVar[str] = "mean"
    scope: ClassVar[Scope] = "fold"


@dataclass(frozen=True, kw_only=True)
class CoordMedian(Method):
    """Weighted coordinate-wise *lower* median: the smallest value v with weight(x <= v) >= W/2."""

    name: ClassVar[str] = "coordmedian"
    scope: ClassVar[Scope] = "coordinate"


@dataclass(frozen=True, kw_only=True)
class TrimmedMean(Method):
    """Per coordinate, drop floor(trim_fraction * N) values at each end; mean of the rest."""

    name: ClassVar[str] = "trimmedmean"
    scope: ClassVar[Scope] = "coordinate"
    trim_fraction: float = 0.1

    def trim_count(self, participants: int) -> int:
        return int(np.floor(self.trim_fraction * participants))

    def check(self, participants: int) -> None:
        super().check(participants)
        if not 0.0 <= self.trim_fraction < 0.5:
            raise ValueError(f"trim_fraction must be in [0, 0.5), got {self.trim_fraction}")
        if participants - 2 * self.trim_count(participants) < 1:
            raise ValueError(f"trim_fraction {self.trim_fraction} trims all {participants}")


@dataclass(frozen=True, kw_only=True)
class GeoMedian(Method):
    """Weighted geometric median by Weiszfeld iterations from the weighted mean.

    Stops when the step is at most ``tolerance`` times the estimate's norm, when the objective
    stops decreasing, on a two-step oscillation, or after ``iterations_max`` updates. A
    contribution closer to the estimate than ``eps`` times the largest distance counts as that
    far (the guard that keeps 1/d finite).
    """

    name: ClassVar[str] = "geomedian"
    scope: ClassVar[Scope] = "global"
    tolerance: float = 1e-6
    iterations_max: int = 100
    eps: float = 1e-9

    def check(self, participants: int) -> None:
        super().check(participants)
        if not (self.tolerance > 0 and self.eps > 0 and self.iterations_max >= 0):
            raise ValueError("geomedian needs tolerance > 0, eps > 0 and iterations_max >= 0")


@dataclass(frozen=True, kw_only=True)
class Krum(Method):
    """Krum (Blanchard et al. 2017): pick the contribution with the lowest score.

    score_k = sum of squared distances from x_k to its N - f - 2 nearest others, f =
    ``byzantine_max``. Ties go to the lower participant index. ``selected`` contributions with
    the lowest scores are averaged with their weights (Krum: 1, which returns that contribution
    exactly). Weights do not enter the scores.
    """

    name: ClassVar[str] = "krum"
    scope: ClassVar[Scope] = "global"
    byzantine_max: int = 0
    selected: int | None = 1

    def selected_count(self, participants: int) -> int:
        return participants - self.byzantine_max if self.selected is None else self.selected

    def check(self, participants: int) -> None:
        super().check(participants)
        if self.byzantine_max < 0 or participants - self.byzantine_max - 2 < 1:
            raise ValueError(
                f"{self.name} with byzantine_max={self.byzantine_max} needs at least "
                f"{self.byzantine_max + 3} contributions, got {participants}"
            )
        if not 1 <= self.selected_count(participants) <= participants:
            raise ValueError(f"{self.name} cannot select {self.selected} of {participants}")


@dataclass(frozen=True, kw_only=True)
class MultiKrum(Krum):
    """Multi-Krum: the weighted mean of the ``selected`` best-scored (default N - f)."""

    name: ClassVar[str] = "multikrum"
    selected: int | None = None


@dataclass(frozen=True, kw_only=True)
class Custom(Method):
    """A user merge function applied to each float tensor (see :data:`MergeFn`).

    With ``coordinatewise=True`` the function promises that each output coordinate depends only
    on that coordinate's inputs; it is then called on 1-d pieces of tensors and shards like the
    coordinate median. Otherwise it sees whole tensors in their shapes, and a sharded plan must
    use ``granularity="tensor"``.
    """

    name: ClassVar[str] = "custom"
    fn: MergeFn
    coordinatewise: bool = False

    @property
    def sharded_scope(self) -> Scope:
        return "coordinate" if self.coordinatewise else "global"


METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (Mean, CoordMedian, GeoMedian, TrimmedMean, Krum, MultiKrum)
}


# What a sync round can merge today: methods that shard by coordinate (each owner merges its
# range alone). Global methods (geometric median, Krum) need distances over whole models: the
# merge engine has them (RangeCollector), the round protocol does not exchange them yet.
ROUND_METHODS: tuple[str, ...] = tuple(
    sorted(name for name, cls in METHODS.items() if cls.scope != "global")
)


def round_method_problem(name: str) -> str | None:
    """Why ``name`` cannot merge a sync round, or None if it can."""
    if name in ROUND_METHODS:
        return None
    valid = ", ".join(ROUND_METHODS)
    if name in METHODS:
        return (
            f"merge method {name!r} needs distances over whole models and is not available in"
            f" sync rounds yet; use one of: {valid}"
        )
    return f"merge method {name!r} is not one of: {valid}"


def method_scope(method: Method) -> Scope:
    return method.sharded_scope if isinstance(method, Custom) else method.scope


def method_named(name: str, **params: Any) -> Method:
    """The registered method ``name`` with ``params`` (its dataclass fields)."""
    cls = METHODS.get(name)
    if cls is None:
        valid = ", ".join(sorted(METHODS))
        raise UnknownMethodError(f"unknown merge method {name!r}; valid: {valid}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        valid = ", ".join(sorted(known))
        raise ConfigError(f"merge method {name!r} has no parameter {unknown[0]!r}; valid: {valid}")
    return cls(**params)


def resolve_method(method: Method | str) -> Method:
    return method_named(method) if isinstance(method, str) else method
