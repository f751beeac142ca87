"""The sharded merge plan: which participant owns which contiguous range of the flat layout.

Theory of operation
-------------------
With P participants and a layout of T bytes, owner i's range is ``[b_i, b_{i+1})`` where
``b_i = snap(i * T // P)``: the ideal split, moved down to the nearest element boundary
(``granularity="element"``), tensor start (``granularity="tensor"``) or chunk boundary
(``granularity="chunk"``: no chunk is split between owners, so an owner's pieces are exactly
the chunk-and-tensor pieces of a whole-state merge; the global methods' partial sums are
grouped by those pieces, which makes a sharded geometric median or Krum bit-identical to the
whole-state one, see :mod:`swarmlearn.merge.sharded`). A boundary that falls in
the padding between two tensors moves to the end of the tensor before it. Snapping is
monotone, so the ranges are contiguous, disjoint, cover the whole layout, and no element
straddles two owners. Ranges may be empty (more participants than elements, or one tensor
larger than a share with ``"tensor"``). The plan depends only on the layout and P, so every
participant computes the same plan.

Ranges need not be chunk-aligned: a chunk that straddles two owners is sent whole to both
(each verifies its hash against the committed manifest and uses its part).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Literal

from swarmlearn.merge.manifest import Layout

Granularity = Literal["element", "tensor", "chunk"]


@dataclass(frozen=True)
class Segment:
    """Elements ``[start, stop)`` (flat, C order) of tensor number ``entry`` of the layout."""

    entry: int
    start: int
    stop: int

    @property
    def count(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Shard:
    """Owner ``owner``'s byte range ``[start_byte, stop_byte)`` of the flat layout."""

    owner: int
    start_byte: int
    stop_byte: int

    @property
    def nbytes(self) -> int:
        return self.stop_byte - self.start_byte

    def chunks(self, layout: Layout) -> range:
        """Indices of the chunks that overlap this range (empty for an empty range)."""
        if self.nbytes == 0:
            return range(0)
        size = layout.chunk_bytes
        return range(self.start_byte // size, -(-self.stop_byte // size))


@dataclass(frozen=True)
class ShardPlan:
    layout: Layout
    shards: tuple[Shard, ...]
    granularity: Granularity

    def owners_of_chunk(self, index: int) -> tuple[int, ...]:
        """The owners a contributor sends chunk ``index`` to (one, or two at a boundary)."""
        start, stop = self.layout.chunk_span(index)
        return tuple(
            s.owner for s in self.shards if s.nbytes and s.start_byte < stop and start < s.stop_byte
        )


def segments_between(layout: Layout, start_byte: int, stop_byte: int) -> tuple[Segment, ...]:
    """The tensor pieces inside ``[start_byte, stop_byte)``; the bounds must be element-aligned."""
    pieces = []
    for index, spec in enumerate(layout.tensors):
        low, high = max(start_byte, spec.offset), min(stop_byte, spec.stop)
        if low >= high:
            continue
        size = spec.itemsize
        if (low - spec.offset) % size or (high - spec.offset) % size:
            raise ValueError(
                f"range [{start_byte}, {stop_byte}) splits an element of {spec.name!r}"
            )
        pieces.append(Segment(index, (low - spec.offset) // size, (high - spec.offset) // size))
    return tuple(pieces)


def snap(layout: Layout, byte: int, granularity: Granularity) -> int:
    """The nearest element boundary (or tensor start, or chunk start) at or below ``byte``."""
    if byte >= layout.total_bytes:
        return layout.total_bytes
    if granularity == "chunk":
        byte = byte // layout.chunk_bytes * layout.chunk_bytes
    offsets = [spec.offset for spec in layout.tensors]
    index = bisect.bisect_right(offsets, byte) - 1
    if index < 0:
        return 0
    spec = layout.tensors[index]
    if byte >= spec.stop:
        return spec.stop
    if granularity == "tensor":
        return spec.offset
    return spec.offset + (byte - spec.offset) // spec.itemsize * spec.itemsize


def plan_shards(
    layout: Layout, participants: int, granularity: Granularity = "element"
) -> ShardPlan:
    """Split the layout into ``participants`` balanced contiguous ranges, owner i gets range i."""
    if participants < 1:
        raise ValueError(f"a plan needs at least one participant, got {participants}")
    if granularity not in ("element", "tensor", "chunk"):
        raise ValueError(f"granularity must be 'element', 'tensor' or 'chunk', got {granularity!r}")
    total = layout.total_bytes
    bounds = [snap(layout, i * total // participants, granularity) for i in range(participants)]
    bounds.append(total)
    shards = tuple(Shard(i, bounds[i], bounds[i + 1]) for i in range(participants))
    return ShardPlan(layout, shards, granularity)
