"""Flat byte layout of a model state, fixed-size chunks, and the manifest that commits to them.

Theory of operation
-------------------
A state is laid out as one flat byte string, entries in the mapping's order. Entry ``i`` starts
at ``offset_i``: 0 for the first, else the end of entry ``i-1`` rounded up to a multiple of
:data:`ALIGN_BYTES` (8). The gap is zero bytes. An entry's elements are in C order, each
little-endian (bfloat16 as its uint16 bits, bool as one byte 0 or 1). The layout's
``total_bytes`` is the end of the last entry (no trailing padding).

Because every offset and ``chunk_bytes`` are multiples of 8 and every element size divides 8, a
chunk boundary is always an element boundary: chunk ``c`` is bytes
``[c * chunk_bytes, min((c + 1) * chunk_bytes, total_bytes))`` and the last chunk may be short.

The :class:`Manifest` is the layout plus the BLAKE3-256 hash of each chunk
(:mod:`swarmlearn.digest`) plus a root::

    root = BLAKE3(layout.encode() || chunk_hash_0 || ... || chunk_hash_{n-1})

where ``layout.encode()`` is the canonical encoding below, so the root commits to names,
dtypes, shapes, offsets and chunk size as well as to the bytes. All integers little-endian::

    b"swarmlearn.merge.layout/1\\0"
    u64 chunk_bytes, u64 total_bytes, u32 tensor count, then per tensor:
      u16 len + UTF-8 name, u8 len + ASCII dtype name, u8 ndim, u64 per dimension, u64 offset

:func:`unpack` rebuilds a :class:`~swarmlearn.merge.state.ModelState` from flat bytes and a
layout with zero-copy ``np.frombuffer`` views on a memoryview of the bytes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from swarmlearn.digest import content_digest, content_hasher
from swarmlearn.merge.dtypes import check_dtype_name, itemsize, storage_dtype
from swarmlearn.merge.state import ModelState

ALIGN_BYTES = 8
#: The largest chunk the default rule picks (a 1 GiB model: 256 chunks).
DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024
#: The smallest: a chunk's hash, frame and merge step cost the same for 64 KiB as for 4 MiB.
CHUNK_BYTES_MIN = 64 * 1024
#: About this many chunks per model: a round among P participants sends each owner its range
#: rounded out to whole chunks, so a range must span many chunks for that to cost little
#: (with P = 16, 16 chunks a range: at most 1/8 more than the range itself).
CHUNKS_PER_MODEL = 256
LAYOUT_MAGIC = b"swarmlearn.merge.layout/1\x00"

BytesLike = bytes | bytearray | memoryview


@dataclass(frozen=True)
class TensorSpec:
    """One entry of the layout: where a tensor's bytes live in the flat buffer."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        return itemsize(self.dtype)

    @property
    def nbytes(self) -> int:
        return self.count * self.itemsize

    @property
    def stop(self) -> int:
        return self.offset + self.nbytes


@dataclass(frozen=True)
class Layout:
    """Tensor specs in order, the flat size and the chunk size: what every participant shares."""

    tensors: tuple[TensorSpec, ...]
    total_bytes: int
    chunk_bytes: int

    def __post_init__(self) -> None:
        if self.chunk_bytes <= 0 or self.chunk_bytes % ALIGN_BYTES:
            raise ValueError(
                f"chunk_bytes must be a positive multiple of 8, got {self.chunk_bytes}"
            )
        end = 0
        for spec in self.tensors:
            check_dtype_name(spec.dtype)
            if spec.offset != _aligned(end) or any(d < 0 for d in spec.shape):
                raise ValueError(f"tensor {spec.name!r}: bad offset {spec.offset} or shape")
            end = spec.stop
        if self.total_bytes != end:
            raise ValueError(f"total_bytes is {self.total_bytes}, the tensors end at {end}")

    @property
    def chunk_count(self) -> int:
        return -(-self.total_bytes // self.chunk_bytes)

    def chunk_span(self, index: int) -> tuple[int, int]:
        """Byte range ``[start, stop)`` of chunk ``index``."""
        if not 0 <= index < self.chunk_count:
            raise IndexError(f"chunk {index} out of range 0..{self.chunk_count - 1}")
        start = index * self.chunk_bytes
        return start, min(start + self.chunk_bytes, self.total_bytes)

    def signature(self) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
        return tuple((t.name, t.dtype, t.shape) for t in self.tensors)

    def encode(self) -> bytes:
        """The canonical encoding hashed into the manifest root (see the module docstring)."""
        parts = [
            LAYOUT_MAGIC,
            struct.pack("<QQI", self.chunk_bytes, self.total_bytes, len(self.tensors)),
        ]
        for spec in self.tensors:
            name = spec.name.encode("utf-8")
            dtype = spec.dtype.encode("ascii")
            parts.append(
                struct.pack("<H", len(name)) + name + struct.pack("<B", len(dtype)) + dtype
            )
            parts.append(
                struct.pack(f"<B{len(spec.shape)}QQ", len(spec.shape), *spec.shape, spec.offset)
            )
        return b"".join(parts)


@dataclass(frozen=True)
class Manifest:
    """A layout plus the BLAKE3 hash of each chunk and the root that commits to both."""

    layout: Layout
    chunk_hashes: tuple[bytes, ...]
    root: bytes

    def verify_chunk(self, index: int, data: BytesLike) -> bool:
        """Whether ``data`` is exactly chunk ``index`` of the committed state."""
        start, stop = self.layout.chunk_span(index)
        return len(data) == stop - start and content_digest(data) == self.chunk_hashes[index]


def _aligned(offset: int) -> int:
    return -(-offset // ALIGN_BYTES) * ALIGN_BYTES


def chunk_bytes_for(total_bytes: int) -> int:
    """The default chunk size for a model of ``total_bytes``: a power of two near
    ``total_bytes / CHUNKS_PER_MODEL``, within [``CHUNK_BYTES_MIN``, ``DEFAULT_CHUNK_BYTES``].

    A chunk is the unit a round verifies (its hash is in the manifest) and sends: an owner of
    a range gets every chunk that overlaps it, whole. With one 4 MiB chunk for a 4 MB model
    every owner got the whole model (P-1 times the traffic of a sharded exchange), so the
    size follows the model. Every node computes it from the layout alone."""
    wanted = max(1, -(-total_bytes // CHUNKS_PER_MODEL))
    return min(DEFAULT_CHUNK_BYTES, max(CHUNK_BYTES_MIN, 1 << (wanted - 1).bit_length()))


def layout_of(state: ModelState, chunk_bytes: int | None = None) -> Layout:
    """The flat layout of ``state``: entries in order, each at an 8-byte aligned offset;
    chunks of ``chunk_bytes`` (default: :func:`chunk_bytes_for` its size)."""
    specs = []
    end = 0
    for name, dtype, shape in state.signature():
        if len(name.encode("utf-8")) > 0xFFFF or len(shape) > 0xFF:
            raise ValueError(f"tensor {name!r}: name or rank too large for the layout encoding")
        spec = TensorSpec(name, dtype, tuple(int(d) for d in shape), _aligned(end))
        specs.append(spec)
        end = spec.stop
    return Layout(tuple(specs), end, chunk_bytes or chunk_bytes_for(end))


def flatten(
    state: ModelState, layout: Layout, out: bytearray | memoryview | None = None
) -> bytearray | memoryview:
    """Write ``state`` into its flat little-endian layout (into ``out`` when given)."""
    if state.signature() != layout.signature():
        raise ValueError("state does not match the layout (names, dtypes or shapes differ)")
    flat: bytearray | memoryview = bytearray(layout.total_bytes) if out is None else out
    if len(flat) != layout.total_bytes:
        raise ValueError(f"out holds {len(flat)} bytes, the layout needs {layout.total_bytes}")
    view = memoryview(flat).cast("B")
    gap_start = 0
    for spec in layout.tensors:
        view[gap_start : spec.offset] = bytes(spec.offset - gap_start)
        target = np.frombuffer(view, storage_dtype(spec.dtype), spec.count, spec.offset)
        np.copyto(target, state[spec.name].reshape(-1), casting="unsafe")
        gap_start = spec.stop
    return flat


def chunk_hashes(layout: Layout, flat: BytesLike) -> tuple[bytes, ...]:
    if len(flat) != layout.total_bytes:
        raise ValueError(f"flat bytes are {len(flat)} long, the layout says {layout.total_bytes}")
    view = memoryview(flat).cast("B")
    spans = (layout.chunk_span(i) for i in range(layout.chunk_count))
    return tuple(content_digest(view[start:stop]) for start, stop in spans)


def manifest_root(layout: Layout, hashes: Sequence[bytes]) -> bytes:
    if len(hashes) != layout.chunk_count:
        raise ValueError(f"{len(hashes)} chunk hashes for {layout.chunk_count} chunks")
    digest = content_hasher(layout.encode())
    for chunk_hash in hashes:
        digest.update(chunk_hash)
    return digest.digest()


def build_manifest(layout: Layout, flat: BytesLike) -> Manifest:
    """Hash the chunks of ``flat`` and compute the root."""
    hashes = chunk_hashes(layout, flat)
    return Manifest(layout, hashes, manifest_root(layout, hashes))


def pack(state: ModelState, chunk_bytes: int | None = None) -> tuple[bytes, Manifest]:
    """Flatten ``state`` and build its manifest: what a participant commits to in a round."""
    layout = layout_of(state, chunk_bytes)
    flat = bytes(flatten(state, layout))
    return flat, build_manifest(layout, flat)


def unpack(flat: BytesLike, layout: Layout | Manifest, *, verify: bool = True) -> ModelState:
    """Rebuild a state from flat bytes: zero-copy views (read-only when ``flat`` is ``bytes``).

    With a :class:`Manifest` and ``verify``, every chunk hash is checked first. Bool entries
    must hold only bytes 0 and 1.
    """
    manifest = layout if isinstance(layout, Manifest) else None
    plain = layout.layout if isinstance(layout, Manifest) else layout
    if len(flat) != plain.total_bytes:
        raise ValueError(f"flat bytes are {len(flat)} long, the layout says {plain.total_bytes}")
    if manifest is not None and verify:
        bad = [i for i, h in enumerate(chunk_hashes(plain, flat)) if h != manifest.chunk_hashes[i]]
        if bad:
            raise ValueError(f"chunks {bad[:8]} do not match the manifest's hashes")
    view = memoryview(flat).cast("B")
    arrays: list[tuple[str, NDArray[Any]]] = []
    for spec in plain.tensors:
        array = np.frombuffer(view, storage_dtype(spec.dtype), spec.count, spec.offset)
        if spec.dtype == "bool" and np.any(array.view(np.uint8) > 1):
            raise ValueError(f"bool tensor {spec.name!r} holds bytes other than 0 and 1")
        arrays.append((spec.name, array.reshape(spec.shape)))
    bf16 = [spec.name for spec in plain.tensors if spec.dtype == "bfloat16"]
    return ModelState(arrays, bfloat16=bf16)
