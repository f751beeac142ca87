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


#: What a sync round can merge: every registered method. Coordinate methods shard alone;
#: the global ones (geometric median, Krum) exchange per-piece partial sums among the owners
#: (roles/sl/global_merge.py).
ROUND_METHODS: tuple[str, ...] = tuple(sorted(METHODS))

#: The parameters a round's method spec may set (``"multikrum:byzantine_max=2"``), with their
#: types and what is valid; the others keep their defaults.
ROUND_PARAMS: dict[str, dict[str, type]] = {
    "trimmedmean": {"trim_fraction": float},
    "geomedian": {"tolerance": float, "iterations_max": int},
    "krum": {"byzantine_max": int},
    "multikrum": {"byzantine_max": int, "selected": int},
}
#: A round's geometric median runs at most this many Weiszfeld updates (each one is a message
#: exchange among the owners).
ROUND_ITERATIONS_MAX = 1000


def parse_round_method(spec: str) -> tuple[str, dict[str, int | float]]:
    """``"name"`` or ``"name:param=value,param=value"`` -> (name, params); ``ConfigError``
    (one line naming what is valid) for anything else."""
    name, _, rest = spec.partition(":")
    if name not in METHODS:
        raise UnknownMethodError(f"merge method {name!r} is not one of: {', '.join(ROUND_METHODS)}")
    allowed = ROUND_PARAMS.get(name, {})
    params: dict[str, int | float] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        kind = allowed.get(key.strip())
        if not sep or kind is None:
            valid = ", ".join(sorted(allowed)) or "none"
            raise ConfigError(
                f"merge method {spec!r}: {item!r} is not param=value with a parameter of"
                f" {name} (valid: {valid})"
            )
        try:
            params[key.strip()] = kind(value.strip())
        except ValueError:
            raise ConfigError(
                f"merge method {spec!r}: {key.strip()} must be {kind.__name__}, got {value!r}"
            ) from None
    _check_params(spec, params)
    return name, params


def _check_params(spec: str, params: dict[str, int | float]) -> None:
    ranges = {
        "trim_fraction": (0.0 <= params.get("trim_fraction", 0.0) < 0.5, "in [0, 0.5)"),
        "tolerance": (params.get("tolerance", 1.0) > 0, "> 0"),
        "iterations_max": (
            0 <= params.get("iterations_max", 0) <= ROUND_ITERATIONS_MAX,
            f"in 0..{ROUND_ITERATIONS_MAX}",
        ),
        "byzantine_max": (params.get("byzantine_max", 0) >= 0, ">= 0"),
        "selected": (params.get("selected", 1) >= 1, ">= 1"),
    }
    for key in params:
        ok, valid = ranges[key]
        if not ok:
            raise ConfigError(f"merge method {spec!r}: {key} must be {valid}, got {params[key]}")


def round_method_problem(spec: str) -> str | None:
    """Why ``spec`` cannot merge a sync round, or None if it can."""
    try:
        parse_round_method(spec)
    except ConfigError as error:
        return str(error)
    return None


#: A global method's exchange takes longer than the mean's: per step, a message round trip
#: among the owners, and per step and GB of model, one pass over the owner's N x range. The
#: coordinate median and trimmed mean compare each value with the N - 1 others: N passes.
GLOBAL_STEP_MS = 30
GLOBAL_STEP_MS_PER_GB = 2_000


def extra_exchange_ms(spec: str, participants: int, model_bytes: int) -> int:
    """How much longer than the mean's an attempt of this method may take (the ledger adds it
    to the exchange deadline; integers only, so every validator computes the same)."""
    try:
        method = round_method(spec, max(participants, 1))
    except (ConfigError, ValueError):
        return 0
    if isinstance(method, GeoMedian):
        steps, passes = method.iterations_max + 1, method.iterations_max + 1
    elif isinstance(method, Krum):
        steps, passes = 1, participants  # N - 1 distances per contribution, once
    elif isinstance(method, CoordMedian | TrimmedMean):
        steps, passes = 0, participants  # N comparisons per value (no steps to exchange)
    else:
        return 0
    per_gb = passes * GLOBAL_STEP_MS_PER_GB * model_bytes // 1_000_000_000
    return steps * GLOBAL_STEP_MS + per_gb


def round_method(spec: str, participants: int) -> Method:
    """The method a round with ``participants`` merges with (``spec`` checked at check-in).

    Krum and Multi-Krum assume ``byzantine_max`` f = (N - 3) // 2 when not given, the most
    that Krum tolerates (N >= 2f + 3), and never more than N - 3; Multi-Krum then averages the
    N - f best (``selected``, at most N). With fewer than 3 participants there is nothing to
    compare: a Krum round merges their weighted mean.
    """
    name, params = parse_round_method(spec)
    if name in ("krum", "multikrum"):
        if participants < 3:
            return Mean()
        most = participants - 3
        params["byzantine_max"] = min(int(params.get("byzantine_max", most // 2)), most)
        if "selected" in params:
            params["selected"] = min(int(params["selected"]), participants)
    method = method_named(name, **params)
    method.check(participants)
    return method


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
