"""Streaming merge of one owner's range as chunks arrive, in any order.

Theory of operation
-------------------
An owner receives, from each of N participants, the chunks that overlap its range, in whatever
order the network delivers them. The *region* of chunk c is the part of chunk c inside the
range. Results must not depend on arrival order, so the reduction order is fixed: participant
0, 1, ..., N-1, for every region.

:class:`RangeMerge` (mean and coordinate methods):

- mean, region of float tensors only: the region keeps ``next``, the first participant not yet
  folded. A chunk from a later participant is held (a reference, not a copy) until its turn. A
  chunk from participant ``next`` is folded at once together with the held chunks that follow
  it (``acc = x * a`` for participant 0, ``acc += x * a`` after, in participant order, block by
  block so the accumulator block stays in cache). The accumulator is the output buffer itself
  for float32/float64 tensors, a float32 buffer for float16/bfloat16.
- coordinate methods, and regions holding integer or bool tensors: all N chunks of the region
  are held, then merged by the kernels and released.

Memory: the output (the range), a scratch buffer (half a chunk, at most 1 MiB), a float32
accumulator per float16 or bfloat16 region in flight, and the held chunks: at most N - 1 per
region in flight. ``held_by`` counts the held bytes per participant: a node's round lanes
stop reading a sender that holds too much (p2p/bulk_push.py), which bounds them; any arrival
order is still merged the same.

The bytes written are exactly those of :func:`~swarmlearn.merge.merge.merge` on whole states,
because both apply the same elementwise kernels in the same participant order.

:class:`RangeCollector` (geometric median, Krum, whole-tensor user functions) keeps every
chunk (N x range) and hands a :class:`~swarmlearn.merge.sharded.RangeStack` to the global steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from swarmlearn.errors import LocalProtocolError, RemoteProtocolError
from swarmlearn.merge.dtypes import compute_dtype, kind, store_float
from swarmlearn.merge.kernels import FOLD_BLOCK_BYTES, WeightSet, fold
from swarmlearn.merge.manifest import BytesLike, Layout
from swarmlearn.merge.methods import Mean, Method, method_scope
from swarmlearn.merge.pieces import Piece, merge_piece, pieces_of_region, storage_view, zero_gaps
from swarmlearn.merge.plan import Segment, Shard, segments_between
from swarmlearn.merge.sharded import RangeStack


@dataclass(frozen=True)
class MergeStatistics:
    participants: int
    regions: int
    regions_done: int
    held_bytes: int
    held_bytes_max: int
    scratch_bytes: int


@dataclass
class _Region:
    start: int  # absolute byte offsets of the region
    stop: int
    chunk_start: int
    segments: tuple[Segment, ...]
    wait_all: bool
    next: int = 0
    held: dict[int, memoryview] = field(default_factory=dict)
    acc: dict[int, tuple[NDArray[Any], NDArray[Any]]] = field(default_factory=dict)


def aligned_buffer(nbytes: int, start_byte: int) -> memoryview:
    """A zeroed buffer whose byte i sits at the 8-byte phase of layout byte ``start_byte + i``."""
    phase = start_byte % 8
    raw = np.zeros(nbytes + 16, np.uint8)
    skip = (-raw.ctypes.data + phase) % 8
    return memoryview(raw[skip : skip + nbytes].data)


class _Inbox:
    """Validation and bookkeeping shared by both receivers."""

    def __init__(self, layout: Layout, shard: Shard, weights: WeightSet) -> None:
        self.layout = layout
        self.shard = shard
        self.weights = weights
        self.participants = weights.count
        self._chunks = shard.chunks(layout)
        self.held_bytes = 0
        self.held_bytes_max = 0
        #: Bytes held per participant (the round's lanes stop reading a sender that holds
        #: too much; see p2p/bulk_push.py).
        self.held_by = [0] * self.participants

    def _check(self, participant: int, chunk_index: int, data: BytesLike) -> memoryview:
        if not 0 <= participant < self.participants:
            raise LocalProtocolError(
                f"participant {participant} is not in 0..{self.participants - 1}"
            )
        if chunk_index not in self._chunks:  # what a sender sent: its fault, not ours
            raise RemoteProtocolError(
                f"chunk {chunk_index} does not overlap owner {self.shard.owner}'s range"
            )
        start, stop = self.layout.chunk_span(chunk_index)
        view = memoryview(data).cast("B")
        if len(view) != stop - start:
            raise RemoteProtocolError(
                f"chunk {chunk_index} must be {stop - start} bytes, got {len(view)}"
            )
        return view

    def _region_span(self, chunk_index: int) -> tuple[int, int, int]:
        start, stop = self.layout.chunk_span(chunk_index)
        return max(start, self.shard.start_byte), min(stop, self.shard.stop_byte), start

    def _hold(self, participant: int, nbytes: int) -> None:
        self.held_bytes += nbytes
        self.held_by[participant] += nbytes
        self.held_bytes_max = max(self.held_bytes_max, self.held_bytes)

    def _unhold(self, participant: int, nbytes: int) -> None:
        self.held_bytes -= nbytes
        self.held_by[participant] -= nbytes


class RangeMerge(_Inbox):
    """Merge one range with the mean or a coordinate method as chunks arrive in any order.

    ``out`` receives the range's merged bytes (allocated when not given); ``scratch_bytes``
    sizes the blocks the accumulator is folded in (default: half a chunk, at most 1 MiB).
    Neither changes the result.
    """

    def __init__(
        self,
        layout: Layout,
        shard: Shard,
        weights: WeightSet,
        method: Method,
        out: memoryview | None = None,
        scratch_bytes: int | None = None,
    ) -> None:
        super().__init__(layout, shard, weights)
        if method_scope(method) == "global":
            raise ValueError(f"method {method.name!r} is global: use RangeCollector")
        method.check(weights.count)
        self.method = method
        self._out = aligned_buffer(shard.nbytes, shard.start_byte) if out is None else out
        if len(self._out) != shard.nbytes:
            raise ValueError(f"out holds {len(self._out)} bytes, the range is {shard.nbytes}")
        zero_gaps(layout, shard.start_byte, shard.stop_byte, self._out)
        self._regions: dict[int, _Region] = {}
        self._done: set[int] = set()
        self._factors = {dt: weights.factors(np.dtype(dt)) for dt in (np.float32, np.float64)}
        if scratch_bytes is None:
            scratch_bytes = min(FOLD_BLOCK_BYTES, layout.chunk_bytes // 2)
        self._scratch = np.empty(max(8, scratch_bytes // 8 * 8), np.uint8)

    @property
    def done(self) -> bool:
        return len(self._done) == len(self._chunks)

    def result(self) -> memoryview:
        """The merged bytes of the range (layout bytes ``[start_byte, stop_byte)``)."""
        if not self.done:
            raise LocalProtocolError(f"range of owner {self.shard.owner} is not complete yet")
        return self._out

    def statistics(self) -> MergeStatistics:
        return MergeStatistics(
            self.participants,
            len(self._chunks),
            len(self._done),
            self.held_bytes,
            self.held_bytes_max,
            self._scratch.nbytes,
        )

    def add(self, participant: int, chunk_index: int, data: BytesLike) -> None:
        """Take participant's chunk ``chunk_index`` (verified by the caller against its manifest).

        The chunk may be held by reference until its turn: do not modify ``data`` afterwards.
        """
        view = self._check(participant, chunk_index, data)
        region = None if chunk_index in self._done else self._region(chunk_index)
        if region is None or participant < region.next or participant in region.held:
            raise RemoteProtocolError(
                f"chunk {chunk_index} of participant {participant} arrived twice"
            )
        if region.wait_all:
            region.held[participant] = view
            self._hold(participant, len(view))
            if len(region.held) == self.participants:
                self._merge_all(chunk_index, region)
            return
        if participant != region.next:
            region.held[participant] = view
            self._hold(participant, len(view))
            return
        batch = [view]
        while region.next + len(batch) in region.held:
            held = region.held.pop(region.next + len(batch))
            self._unhold(region.next + len(batch), len(held))
            batch.append(held)
        self._fold(region, batch)
        if region.next == self.participants:
            self._finish_fold(chunk_index, region)

    def _region(self, chunk_index: int) -> _Region:
        region = self._regions.get(chunk_index)
        if region is None:
            start, stop, chunk_start = self._region_span(chunk_index)
            segments = segments_between(self.layout, start, stop)
            discrete = any(kind(self.layout.tensors[s.entry].dtype) != "float" for s in segments)
            wait_all = discrete or not isinstance(self.method, Mean)
            region = _Region(start, stop, chunk_start, segments, wait_all)
            self._regions[chunk_index] = region
        return region

    def _fold(self, region: _Region, batch: list[memoryview]) -> None:
        """Fold the chunks of participants ``region.next, region.next + 1, ...`` in order.

        Block by block, all of the batch at once, so the accumulator block stays in cache.
        """
        for index, segment in enumerate(region.segments):
            spec = self.layout.tensors[segment.entry]
            byte = spec.offset + segment.start * spec.itemsize
            cdtype = compute_dtype(spec.dtype)
            if region.next == 0:
                target = storage_view(self._out, spec, byte - self.shard.start_byte, segment.count)
                acc = target if target.dtype == cdtype else np.empty(segment.count, cdtype)
                region.acc[index] = (acc, target)
            acc = region.acc[index][0]
            scratch = self._scratch.view(cdtype)
            factors = self._factors[cdtype.type]
            columns = [
                storage_view(chunk, spec, byte - region.chunk_start, segment.count)
                for chunk in batch
            ]
            for start in range(0, segment.count, len(scratch)):
                stop = start + len(scratch)
                for offset, column in enumerate(columns):
                    participant = region.next + offset
                    first = participant == 0
                    factor = factors[participant]
                    fold(acc[start:stop], column[start:stop], spec.dtype, factor, first, scratch)
        region.next += len(batch)

    def _finish_fold(self, chunk_index: int, region: _Region) -> None:
        for index, segment in enumerate(region.segments):
            acc, target = region.acc[index]
            if acc is not target:
                store_float(acc, self.layout.tensors[segment.entry].dtype, target)
        self._close(chunk_index)

    def _merge_all(self, chunk_index: int, region: _Region) -> None:
        chunks = [region.held[p] for p in range(self.participants)]
        pieces = pieces_of_region(
            self.layout,
            self.shard.start_byte,
            (region.start, region.stop),
            region.chunk_start,
            chunks,
        )
        for piece in pieces:
            merge_piece(piece, self.method, self.weights, piece.out_view(self._out))
        for participant, chunk in enumerate(chunks):
            self._unhold(participant, len(chunk))
        self._close(chunk_index)

    def _close(self, chunk_index: int) -> None:
        del self._regions[chunk_index]
        self._done.add(chunk_index)


class RangeCollector(_Inbox):
    """Keep every chunk of one range (N x range) for the global methods' steps."""

    def __init__(self, layout: Layout, shard: Shard, weights: WeightSet) -> None:
        super().__init__(layout, shard, weights)
        self._held: dict[int, dict[int, memoryview]] = {c: {} for c in self._chunks}
        self._missing = len(self._chunks) * self.participants

    @property
    def done(self) -> bool:
        return self._missing == 0

    def add(self, participant: int, chunk_index: int, data: BytesLike) -> None:
        """Take a chunk (held by reference: do not modify ``data`` afterwards)."""
        view = self._check(participant, chunk_index, data)
        slots = self._held[chunk_index]
        if participant in slots:
            raise RemoteProtocolError(
                f"chunk {chunk_index} of participant {participant} arrived twice"
            )
        slots[participant] = view
        self._hold(participant, len(view))
        self._missing -= 1

    def stack(self) -> RangeStack:
        """The complete range as a :class:`RangeStack` (zero-copy views of the chunks)."""
        if not self.done:
            raise LocalProtocolError(
                f"range of owner {self.shard.owner} is missing {self._missing} chunks"
            )
        pieces: list[Piece] = []
        for chunk_index in self._chunks:
            start, stop, chunk_start = self._region_span(chunk_index)
            chunks = [self._held[chunk_index][p] for p in range(self.participants)]
            pieces += pieces_of_region(
                self.layout, self.shard.start_byte, (start, stop), chunk_start, chunks
            )
        return RangeStack(
            self.layout, self.shard.start_byte, self.shard.stop_byte, pieces, self.weights
        )
