"""Model state, bfloat16 rounding, the flat layout, chunks and the manifest."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from swarmlearn.digest import content_digest
from swarmlearn.merge import (
    ALIGN_BYTES,
    Layout,
    ModelState,
    TensorSpec,
    bfloat16_from_float32,
    bfloat16_to_float32,
    build_manifest,
    flatten,
    layout_of,
    manifest_root,
    pack,
    unpack,
)
from tests.merge_helpers import Spec, bf16_round_reference, random_states, specs


def small_state() -> ModelState:
    arrays: dict[str, NDArray[Any]] = {
        "fc.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
        "half": np.array([1.5, -2.0, 3.25], dtype=np.float16),
        "mask": np.array([True, False, True]),
    }
    return ModelState(arrays)


# ---------------------------------------------------------------------------- ModelState


def test_state_keeps_order_dtypes_and_arrays() -> None:
    bits = bfloat16_from_float32(np.array([1.0, -2.5], np.float32))
    state = ModelState([("b", np.zeros(2)), ("a", bits)], bfloat16=["a"])
    assert list(state) == ["b", "a"]
    assert state.dtype("a") == "bfloat16"
    assert state.dtype("b") == "float64"
    assert state.signature() == (("b", "float64", (2,)), ("a", "bfloat16", (2,)))
    assert state["a"] is bits
    assert "bfloat16[2]" in repr(state)


@pytest.mark.parametrize(
    ("arrays", "bf16", "message"),
    [
        ([("a", np.zeros(1)), ("a", np.zeros(1))], (), "appears twice"),
        ([("a", [1.0])], (), "not a numpy array"),
        ([("a", np.zeros(1, np.complex64))], (), "unsupported array dtype"),
        ([("a", np.zeros(1, np.float32))], ("a",), "must be uint16"),
        ([("a", np.zeros(1))], ("b",), "does not hold"),
        ([("", np.zeros(1))], (), "non-empty"),
    ],
)
def test_state_rejects_bad_input(
    arrays: list[tuple[str, object]], bf16: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ModelState(arrays, bfloat16=bf16)  # type: ignore[arg-type]


def test_state_equality_is_exact() -> None:
    a = small_state()
    b = ModelState({name: np.array(array, copy=True) for name, array in a.items()})
    assert a == b
    b["half"][0] = np.float16(1.25)
    assert a != b
    assert a != ModelState({"fc.weight": np.zeros((3, 2), np.float32)})
    assert a.__eq__(object()) is NotImplemented


# ------------------------------------------------------------------------------- bfloat16


def test_bfloat16_rounding_matches_reference() -> None:
    rng = np.random.default_rng(3)
    words = rng.integers(0, 2**32, 3000, dtype=np.uint64).astype(np.uint32)
    special = [0x3F808000, 0x3F818000, 0x7F7FFFFF, 0x7F7F8000, 0xFF7F8000, 0x00008000, 0x7F800000]
    words = np.concatenate([words, np.array([*special, 2143289345, 4286578689], np.uint32)])
    values = words.view(np.float32)
    got = bfloat16_from_float32(values)
    expected = [bf16_round_reference(float(v)) for v in values]
    assert got.tolist() == expected


def test_bfloat16_widening_is_exact_and_roundtrips() -> None:
    bits = np.arange(0, 2**16, dtype=np.uint16)
    wide = bfloat16_to_float32(bits)
    finite = np.isfinite(wide)
    assert np.array_equal(bfloat16_from_float32(wide)[finite], bits[finite])
    assert np.all(
        np.isnan(
            bfloat16_to_float32(bfloat16_from_float32(wide[~np.isfinite(wide) & (wide != wide)]))
        )
    )
    out = np.empty(3, np.float32)
    assert bfloat16_to_float32(bits[:3], out) is out


# ---------------------------------------------------------------------- layout and pack


def test_layout_offsets_are_aligned_and_documented() -> None:
    layout = layout_of(small_state(), chunk_bytes=16)
    offsets = [(t.name, t.offset, t.nbytes) for t in layout.tensors]
    assert offsets == [
        ("fc.weight", 0, 24),
        ("bn.num_batches_tracked", 24, 8),
        ("half", 32, 6),
        ("mask", 40, 3),
    ]
    assert layout.total_bytes == 43
    assert layout.chunk_count == 3
    assert layout.chunk_span(2) == (32, 43)
    flat, manifest = pack(small_state(), 16)
    assert flat[38:40] == b"\0\0"  # padding after "half"
    assert flat[24:32] == struct.pack("<q", 7)
    assert flat[32:38] == np.array([1.5, -2.0, 3.25], "<f2").tobytes()
    assert manifest.chunk_hashes[1] == content_digest(flat[16:32])


def test_layout_encoding_is_canonical() -> None:
    layout = Layout((TensorSpec("w", "float32", (2, 3), 0),), 24, 8)
    expected = (
        b"swarmlearn.merge.layout/1\x00"
        + struct.pack("<QQI", 8, 24, 1)
        + struct.pack("<H", 1)
        + b"w"
        + struct.pack("<B", 7)
        + b"float32"
        + struct.pack("<BQQQ", 2, 2, 3, 0)
    )
    assert layout.encode() == expected
    hashes = [content_digest(bytes(8))] * 3
    assert manifest_root(layout, hashes) == content_digest(expected + b"".join(hashes))


@pytest.mark.parametrize(
    ("layout_args", "message"),
    [
        (((), 0, 12), "multiple of 8"),
        (((TensorSpec("w", "float32", (2,), 4),), 12, 8), "bad offset"),
        (((TensorSpec("w", "float32", (2,), 0),), 9, 8), "tensors end at 8"),
        (((TensorSpec("w", "complex", (2,), 0),), 8, 8), "unsupported dtype"),
    ],
)
def test_layout_rejects_inconsistent_specs(layout_args: tuple[object, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Layout(*layout_args)  # type: ignore[arg-type]


@given(layout=specs(), seed=st.integers(0, 2**32 - 1), chunk=st.sampled_from([8, 16, 40, 4096]))
@settings(max_examples=60)
def test_pack_unpack_roundtrip(layout: list[Spec], seed: int, chunk: int) -> None:
    (state,) = random_states(layout, 1, seed)
    flat, manifest = pack(state, chunk)
    assert manifest.layout.total_bytes == len(flat)
    assert all(t.offset % ALIGN_BYTES == 0 for t in manifest.layout.tensors)
    rebuilt = unpack(flat, manifest)
    assert rebuilt == state
    assert rebuilt.signature() == state.signature()
    for index in range(manifest.layout.chunk_count):
        start, stop = manifest.layout.chunk_span(index)
        assert manifest.verify_chunk(index, flat[start:stop])


def test_unpack_is_zero_copy() -> None:
    state = small_state()
    layout = layout_of(state)
    flat = flatten(state, layout)
    assert isinstance(flat, bytearray)
    rebuilt = unpack(flat, layout)
    flat[0:4] = struct.pack("<f", 42.0)
    assert rebuilt["fc.weight"][0, 0] == 42.0
    readonly = unpack(bytes(flat), layout)
    assert not readonly["fc.weight"].flags.writeable


def test_root_commits_to_bytes_shapes_names_dtypes_and_chunk_size() -> None:
    base = small_state()
    root = pack(base, 16)[1].root
    changed_byte = ModelState({**base, "half": np.array([1.5, -2.0, 3.5], np.float16)})
    reshaped = ModelState({**base, "fc.weight": base["fc.weight"].reshape(3, 2)})
    renamed = ModelState({("fc.w" if k == "fc.weight" else k): v for k, v in base.items()})
    bits = ModelState({"x": np.array([1, 2], np.uint16)})
    tagged = ModelState({"x": np.array([1, 2], np.uint16)}, bfloat16=["x"])
    others = [pack(s, 16)[1].root for s in (changed_byte, reshaped, renamed)]
    assert len({root, pack(base, 8)[1].root, *others}) == 5
    assert pack(bits)[1].root != pack(tagged)[1].root
    assert pack(base, 16)[1].root == root


def test_unpack_and_flatten_reject_bad_input() -> None:
    flat, manifest = pack(small_state(), 16)
    with pytest.raises(ValueError, match="flat bytes are 42 long"):
        unpack(flat[:-1], manifest)
    corrupt = bytearray(flat)
    corrupt[0] ^= 1
    with pytest.raises(ValueError, match=r"chunks \[0\]"):
        unpack(bytes(corrupt), manifest)
    assert not manifest.verify_chunk(0, bytes(corrupt[:16]))
    unpack(bytes(corrupt), manifest, verify=False)
    bad_bool = bytearray(flat)
    bad_bool[40] = 2
    with pytest.raises(ValueError, match="bool tensor 'mask'"):
        unpack(bytes(bad_bool), manifest.layout)
    with pytest.raises(ValueError, match="does not match the layout"):
        flatten(ModelState({"x": np.zeros(1)}), manifest.layout)
    with pytest.raises(ValueError, match="out holds"):
        flatten(small_state(), manifest.layout, bytearray(3))
    with pytest.raises(IndexError):
        manifest.layout.chunk_span(3)


def test_build_manifest_matches_pack_and_empty_state() -> None:
    flat, manifest = pack(small_state(), 16)
    assert build_manifest(manifest.layout, flat) == manifest
    empty_flat, empty = pack(ModelState({}))
    assert empty_flat == b""
    assert empty.chunk_hashes == ()
    assert unpack(empty_flat, empty) == ModelState({})
