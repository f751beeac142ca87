"""Merging whole states in one process: the reference every sharded merge must reproduce.

:func:`merge` takes N states with the same layout, positive weights and a method, and returns
the merged state. Mean and coordinate methods merge each tensor whole with the kernels of
:mod:`swarmlearn.merge.kernels`; global methods run their sharded steps over a single shard
(:mod:`swarmlearn.merge.sharded`). :func:`merge_sharded` runs the whole sharded protocol in one
process (plan, chunks arriving in a given order, owners merging, the global steps, the
all-gather) and returns the merged flat bytes: the sans-network model of a sync round.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from swarmlearn.merge.dtypes import storage_dtype
from swarmlearn.merge.kernels import WeightSet
from swarmlearn.merge.manifest import BytesLike, Layout, layout_of, unpack
from swarmlearn.merge.methods import Custom, GeoMedian, Krum, Method, method_scope, resolve_method
from swarmlearn.merge.pieces import Piece, merge_piece, pieces_of_states, storage_view
from swarmlearn.merge.plan import Granularity, Segment, ShardPlan, plan_shards
from swarmlearn.merge.sharded import RangeStack, drive_geomedian, drive_krum
from swarmlearn.merge.state import ModelState
from swarmlearn.merge.stream import RangeCollector, RangeMerge, aligned_buffer

Weights = Sequence[float] | NDArray[Any] | None
Arrival = tuple[int, int]  # (participant, chunk index)


def _weights(weights: Weights, count: int) -> WeightSet:
    return WeightSet.of(np.ones(count) if weights is None else weights, count)


def merge(
    states: Sequence[ModelState],
    weights: Weights = None,
    method: Method | str = "mean",
    *,
    chunk_bytes: int | None = None,
) -> ModelState:
    """Merge N states (same names, dtypes, shapes) with positive ``weights`` (default equal).

    ``chunk_bytes`` matters to the global methods only: their float64 sums are grouped by
    chunk (one per tensor's part of each chunk), as a sync round of that layout groups them,
    so a round's result is ``merge(..., chunk_bytes=layout.chunk_bytes)`` bit for bit (the
    default is :func:`~swarmlearn.merge.manifest.chunk_bytes_for`, as ``layout_of``'s)."""
    if not states:
        raise ValueError("merge needs at least one state")
    signature = states[0].signature()
    for index, state in enumerate(states[1:], start=1):
        if state.signature() != signature:
            raise ValueError(f"state {index} differs from state 0 in names, dtypes or shapes")
    chosen = resolve_method(method)
    chosen.check(len(states))
    weight_set = _weights(weights, len(states))
    layout = layout_of(states[0], chunk_bytes)
    out = aligned_buffer(layout.total_bytes, 0)
    if method_scope(chosen) == "global":
        pieces = pieces_of_states(layout, states, by_chunk=True)
        stack = RangeStack(layout, 0, layout.total_bytes, pieces, weight_set)
        finish_global([stack], chosen, [out])
    else:
        for index, spec in enumerate(layout.tensors):
            dtype = storage_dtype(spec.dtype)
            columns = tuple(np.ascontiguousarray(s[spec.name], dtype).reshape(-1) for s in states)
            piece = Piece(spec, Segment(index, 0, spec.count), spec.offset, columns)
            merge_piece(piece, chosen, weight_set, storage_view(out, spec, spec.offset, spec.count))
    return unpack(out, layout)


def merge_arrays(
    arrays: Sequence[NDArray[Any]], weights: Weights = None, method: Method | str = "mean"
) -> NDArray[Any]:
    """Merge N arrays of one shape and dtype (each array is one contribution)."""
    states = [ModelState({"x": np.asarray(a)}) for a in arrays]
    return merge(states, weights, method)["x"]


def finish_global(
    stacks: Sequence[RangeStack],
    method: Method,
    outs: Sequence[memoryview],
    map_fn: Callable[..., Iterable[Any]] = map,
) -> None:
    """Drive a global method's steps over the owners' stacks and write each owner's range."""
    selected: tuple[int, ...] | None = None
    if isinstance(method, GeoMedian):
        drive_geomedian(stacks, method, map_fn)
    elif isinstance(method, Krum):
        selected = drive_krum(stacks, method, map_fn)
    elif not isinstance(method, Custom):
        raise ValueError(f"method {method.name!r} is not global")
    list(map_fn(lambda stack, out: stack.write(method, out, selected), stacks, outs))


def default_arrivals(plan: ShardPlan, participants: int) -> list[Arrival]:
    """Every participant's chunks, participant by participant, in chunk order."""
    chunks = range(plan.layout.chunk_count)
    return [(p, c) for p in range(participants) for c in chunks]


def merge_sharded(
    layout: Layout,
    flats: Sequence[BytesLike],
    weights: Weights = None,
    method: Method | str = "mean",
    *,
    shards: int | ShardPlan | None = None,
    granularity: Granularity | None = None,
    arrivals: Sequence[Arrival] | None = None,
    map_fn: Callable[..., Iterable[Any]] = map,
) -> memoryview:
    """Run a sharded merge in one process and return the merged flat bytes.

    ``flats`` are the participants' flat states; ``shards`` the number of owners (default: one
    per participant) or a plan; ``granularity`` that of the plan made (default: ``"chunk"``
    for the global methods, as sync rounds plan them, ``"element"`` for the others);
    ``arrivals`` the order in which (participant, chunk) pairs
    arrive (each owner sees the pairs whose chunk overlaps its range, in this order).
    ``map_fn`` runs the owners (``map`` or a thread pool's ``map``).
    """
    chosen = resolve_method(method)
    chosen.check(len(flats))
    weight_set = _weights(weights, len(flats))
    if any(len(flat) != layout.total_bytes for flat in flats):
        raise ValueError(f"every flat state must be {layout.total_bytes} bytes")
    if granularity is None:
        granularity = "chunk" if method_scope(chosen) == "global" else "element"
    plan = (
        shards
        if isinstance(shards, ShardPlan)
        else plan_shards(layout, shards or len(flats), granularity)
    )
    order = default_arrivals(plan, len(flats)) if arrivals is None else arrivals
    views = [memoryview(flat).cast("B") for flat in flats]
    merged = aligned_buffer(layout.total_bytes, 0)
    outs = [merged[s.start_byte : s.stop_byte] for s in plan.shards]
    is_global = method_scope(chosen) == "global"

    def receive(index: int) -> RangeMerge | RangeCollector:
        shard = plan.shards[index]
        inbox: RangeMerge | RangeCollector
        if is_global:
            inbox = RangeCollector(layout, shard, weight_set)
        else:
            inbox = RangeMerge(layout, shard, weight_set, chosen, outs[index])
        mine = shard.chunks(layout)
        for participant, chunk in order:
            if chunk in mine:
                start, stop = layout.chunk_span(chunk)
                inbox.add(participant, chunk, views[participant][start:stop])
        return inbox

    inboxes = list(map_fn(receive, range(len(plan.shards))))
    if is_global:
        stacks = [inbox.stack() for inbox in inboxes if isinstance(inbox, RangeCollector)]
        finish_global(stacks, chosen, outs, map_fn)
    elif not all(inbox.done for inbox in inboxes):
        raise ValueError("the arrivals do not hold every chunk of every participant")
    return merged
