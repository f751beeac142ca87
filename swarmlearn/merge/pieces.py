"""Pieces: one tensor segment with its N contributions, as zero-copy 1-d views.

A piece is the unit every merge step works on. Pieces come from two places: from whole states
(:func:`pieces_of_states`, blocks of each tensor) and from received chunks
(:func:`pieces_of_region`, the part of one chunk inside an owner's range, cut at tensor
boundaries). ``out_offset`` says where the piece's merged bytes go in the owner's output buffer
(the range's bytes; for whole states, the whole layout).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from swarmlearn.merge.dtypes import kind, storage_dtype, store_float, to_compute
from swarmlearn.merge.kernels import (
    WeightSet,
    int_rule,
    mean_float,
    median_float,
    merge_discrete,
    trimmed_float,
)
from swarmlearn.merge.manifest import Layout, TensorSpec
from swarmlearn.merge.methods import CoordMedian, Custom, Krum, Mean, Method, TrimmedMean
from swarmlearn.merge.plan import Segment, segments_between
from swarmlearn.merge.state import ModelState

PIECE_ELEMENTS = 1 << 18


@dataclass(frozen=True, eq=False)
class Piece:
    spec: TensorSpec
    segment: Segment
    out_offset: int
    columns: tuple[NDArray[Any], ...]

    @property
    def count(self) -> int:
        return self.segment.count

    def out_view(self, out: memoryview) -> NDArray[Any]:
        """This piece's place in ``out``, the owner's output bytes."""
        return storage_view(out, self.spec, self.out_offset, self.count)


def storage_view(data: memoryview, spec: TensorSpec, byte_offset: int, count: int) -> NDArray[Any]:
    return np.frombuffer(data, storage_dtype(spec.dtype), count, byte_offset)


def pieces_of_states(
    layout: Layout,
    states: Sequence[ModelState],
    block_elements: int = PIECE_ELEMENTS,
    *,
    by_chunk: bool = False,
) -> list[Piece]:
    """Blocks of every tensor of ``states`` (views when the arrays are contiguous); with
    ``by_chunk``, the tensors cut at the layout's chunk boundaries instead: the very pieces
    an owner's received chunks give (:func:`pieces_of_region`), in layout order."""
    pieces = []
    for index, spec in enumerate(layout.tensors):
        dtype = storage_dtype(spec.dtype)
        flats = [
            np.ascontiguousarray(state[spec.name], dtype=dtype).reshape(-1) for state in states
        ]
        for start, stop in _cuts(layout, spec, block_elements, by_chunk):
            columns = tuple(flat[start:stop] for flat in flats)
            offset = spec.offset + start * spec.itemsize
            pieces.append(Piece(spec, Segment(index, start, stop), offset, columns))
    return pieces


def _cuts(
    layout: Layout, spec: TensorSpec, block_elements: int, by_chunk: bool
) -> list[tuple[int, int]]:
    """Element spans ``[start, stop)`` a tensor is cut into (blocks, or at chunk bounds)."""
    if not by_chunk:
        return [
            (start, min(start + block_elements, spec.count))
            for start in range(0, spec.count, block_elements)
        ]
    size = layout.chunk_bytes
    bounds = [spec.offset, *range((spec.offset // size + 1) * size, spec.stop, size), spec.stop]
    spans = [
        ((a - spec.offset) // spec.itemsize, (b - spec.offset) // spec.itemsize)
        for a, b in itertools.pairwise(bounds)
    ]
    return [(a, b) for a, b in spans if b > a]


def pieces_of_region(
    layout: Layout,
    range_start: int,
    region: tuple[int, int],
    chunk_start: int,
    chunks: Sequence[memoryview],
) -> list[Piece]:
    """Pieces of ``region`` (absolute bytes, inside one chunk starting at ``chunk_start``)."""
    pieces = []
    for segment in segments_between(layout, *region):
        spec = layout.tensors[segment.entry]
        byte = spec.offset + segment.start * spec.itemsize
        columns = tuple(storage_view(c, spec, byte - chunk_start, segment.count) for c in chunks)
        pieces.append(Piece(spec, segment, byte - range_start, columns))
    return pieces


def zero_gaps(layout: Layout, start: int, stop: int, out: memoryview) -> None:
    """Zero the padding bytes of ``[start, stop)`` in ``out`` (which holds that range)."""
    cursor = start
    for spec in layout.tensors:
        if spec.offset > cursor and cursor < stop:
            gap_stop = min(spec.offset, stop)
            out[cursor - start : gap_stop - start] = bytes(gap_stop - cursor)
        cursor = max(cursor, spec.stop)


def call_custom(
    method: Custom,
    name: str,
    arrays: Sequence[NDArray[Any]],
    weights: WeightSet,
) -> NDArray[Any]:
    """Call a user merge function and check its result's type, shape and dtype."""
    expected = arrays[0]
    result = method.fn(arrays, weights.values.copy())
    if not isinstance(result, np.ndarray):
        raise ValueError(
            f"custom merge function returned {type(result).__name__} for tensor {name!r}; "
            f"expected a numpy array {expected.dtype}{list(expected.shape)}"
        )
    if result.shape != expected.shape or result.dtype != expected.dtype:
        raise ValueError(
            f"custom merge function returned {result.dtype}{list(result.shape)} for tensor "
            f"{name!r}; expected {expected.dtype}{list(expected.shape)}"
        )
    return result


def merge_piece(
    piece: Piece,
    method: Method,
    weights: WeightSet,
    out: NDArray[Any],
    columns: Sequence[NDArray[Any]] | None = None,
) -> None:
    """Merge one piece with a fold or coordinate method (discrete pieces by their rule)."""
    spec = piece.spec
    columns = piece.columns if columns is None else columns
    if kind(spec.dtype) != "float":
        rule = int_rule(spec.name, method.counter_suffixes)
        merge_discrete(columns, spec.dtype, rule, weights, out)
    elif isinstance(method, Mean | Krum):
        mean_float(columns, spec.dtype, weights, out)
    elif isinstance(method, CoordMedian):
        median_float(columns, spec.dtype, weights, out)
    elif isinstance(method, TrimmedMean):
        trimmed_float(columns, spec.dtype, weights, method.trim_count(len(columns)), out)
    elif isinstance(method, Custom) and method.coordinatewise:
        arrays = [to_compute(column, spec.dtype) for column in columns]
        store_float(call_custom(method, spec.name, arrays, weights), spec.dtype, out)
    else:
        raise ValueError(f"method {method.name!r} does not merge piece by piece")
