"""Chunked transfer pieces: the manifest, the assembler (Hypothesis over out-of-range,
duplicate, wrong-hash, oversized and reordered chunks) and the scheduler, which the bulk
fetch (p2p/bulk.py) runs over its lanes."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarmlearn.digest import content_digest
from swarmlearn.errors import LocalProtocolError, RemoteProtocolError
from swarmlearn.merge.manifest import pack
from swarmlearn.merge.state import ModelState
from swarmlearn.p2p.transfer import (
    Assembler,
    BlobManifest,
    BlobTooLarge,
    ChunkScheduler,
    ManifestReply,
    Verdict,
)

BLOB = random.Random(1).randbytes(10_000)
MANIFEST = BlobManifest.build(BLOB, 1024)

# ---------------------------------------------------------------- manifest


def test_a_manifest_commits_to_sizes_and_every_chunk() -> None:
    assert MANIFEST.chunk_count == 10
    assert MANIFEST.chunk_span(9) == (9216, 10_000)
    assert MANIFEST.chunk_hashes[3] == content_digest(BLOB[3072:4096])
    reply = MANIFEST.to_message()
    assert BlobManifest.from_message(reply, MANIFEST.root) == MANIFEST
    tampered = ManifestReply(reply.root, reply.total_bytes, 2048, reply.hashes)
    with pytest.raises(RemoteProtocolError):
        BlobManifest.from_message(tampered, MANIFEST.root)
    forged = bytes(reply.hashes)[:-1] + b"\0"
    with pytest.raises(RemoteProtocolError, match="root"):
        BlobManifest.from_message(ManifestReply(reply.root, 10_000, 1024, forged), MANIFEST.root)
    with pytest.raises(RemoteProtocolError):
        BlobManifest.from_message(reply, b"\0" * 32)


def test_a_merge_manifest_converts_without_rehashing() -> None:
    state = ModelState([("w", np.arange(5000, dtype=np.float32))])
    flat, merged = pack(state, chunk_bytes=4096)
    blob = BlobManifest.from_merge(merged)
    assert blob.chunk_hashes == merged.chunk_hashes
    assert blob == BlobManifest.build(flat, 4096)


# ---------------------------------------------------------------- assembler


def test_the_assembler_checks_every_chunk_and_counts_waste() -> None:
    a = Assembler(MANIFEST, bytes_max=1 << 20)
    assert a.offer(10, BLOB[:1024]) is Verdict.OUT_OF_RANGE
    assert a.offer(-1, BLOB[:1024]) is Verdict.OUT_OF_RANGE
    assert a.offer(0, BLOB[:1025]) is Verdict.WRONG_SIZE
    assert a.offer(0, BLOB[1:1025]) is Verdict.BAD_HASH
    assert a.offer(0, BLOB[:1024]) is Verdict.ACCEPTED
    assert a.offer(0, BLOB[:1024]) is Verdict.DUPLICATE
    assert a.offer(9, BLOB[9216:]) is Verdict.ACCEPTED
    assert a.missing() == list(range(1, 9))
    assert not a.complete
    assert a.wasted_bytes == 1024 * 5 + 1
    assert a.received_bytes == a.wasted_bytes + 1024 + 784


def test_the_ceiling_refuses_a_large_manifest() -> None:
    with pytest.raises(BlobTooLarge, match="ceiling"):
        Assembler(MANIFEST, bytes_max=9_999)


def test_a_resumed_buffer_keeps_only_chunks_that_still_verify() -> None:
    first = Assembler(MANIFEST, bytes_max=1 << 20)
    for index in (1, 2, 5):
        start, stop = MANIFEST.chunk_span(index)
        assert first.offer(index, BLOB[start:stop]) is Verdict.ACCEPTED
    bits = first.bitset()
    buffer = bytearray(first.buffer)
    buffer[5 * 1024] ^= 1  # the stored copy of chunk 5 got corrupted
    again = Assembler(MANIFEST, bytes_max=1 << 20, buffer=buffer)
    assert again.resume(bits) == [5]
    assert again.missing() == [0, 3, 4, 5, 6, 7, 8, 9]


@st.composite
def offers(draw: st.DrawFn) -> list[tuple[int, bytes]]:
    """Every chunk once, reordered, mixed with junk: out of range, duplicates, wrong bytes,
    oversized and truncated chunks."""
    good = [(i, BLOB[slice(*MANIFEST.chunk_span(i))]) for i in range(MANIFEST.chunk_count)]
    junk = draw(
        st.lists(
            st.one_of(
                st.tuples(st.integers(-5, 30), st.binary(max_size=64)),
                st.sampled_from(good),
                st.builds(lambda i, n: (i, BLOB[:n]), st.integers(0, 9), st.integers(0, 2048)),
                st.builds(
                    lambda c: (c[0], c[1][:-1] + bytes([c[1][-1] ^ 1])), st.sampled_from(good)
                ),
            ),
            max_size=40,
        )
    )
    mixed = draw(st.permutations(good + junk))
    return list(mixed)


@given(offers())
def test_any_mix_of_chunks_assembles_exactly_the_blob(chunks: list[tuple[int, bytes]]) -> None:
    a = Assembler(MANIFEST, bytes_max=len(BLOB))
    for index, data in chunks:
        before = a.held_count
        verdict = a.offer(index, data)
        start, stop = MANIFEST.chunk_span(index) if 0 <= index < 10 else (0, 0)
        right = 0 <= index < 10 and data == BLOB[start:stop]
        assert (verdict is Verdict.ACCEPTED) == (right and before == a.held_count - 1)
        if verdict.is_fault:
            assert not right
    assert a.complete
    assert bytes(a.buffer) == BLOB
    assert a.received_bytes - a.wasted_bytes == len(BLOB)


# ---------------------------------------------------------------- scheduler


def test_the_scheduler_spreads_chunks_and_takes_them_back() -> None:
    s = ChunkScheduler(range(10), ["a", "b", "c"], per_source_max=2)
    assert (s.assign("a"), s.assign("b"), s.assign("c")) == ([0, 1], [2, 3], [4, 5])
    assert s.assign("a") == []  # its two are in flight
    s.delivered("a", 0)
    s.failed("a", 1)
    assert s.assign("a") == [1, 6]
    assert s.remove("b", ban=True) == [2, 3]
    assert s.assign("c") == []
    assert s.assign("b") == []
    s.add_source("b")
    assert "b" not in s.sources()  # banned stays banned
    with pytest.raises(LocalProtocolError):
        ChunkScheduler([], ["a"], per_source_max=0)


def test_in_the_endgame_an_idle_source_duplicates_a_straggler() -> None:
    s = ChunkScheduler(range(3), ["slow", "fast"], per_source_max=2)
    assert s.assign("slow") == [0, 1]
    assert s.assign("fast") == [2]
    s.delivered("fast", 2)
    assert s.assign("fast") == [0]  # idle, nothing in the pool: one duplicate
    assert s.assign("fast") == []
    s.delivered("fast", 0)
    assert s.in_flight["slow"] == [1]
    assert s.remaining == 1


@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 3), st.integers(0, 11))))
def test_scheduling_never_loses_a_chunk(steps: list[tuple[str, int, int]]) -> None:
    s = ChunkScheduler(range(12), ["a", "b", "c"], per_source_max=3)
    for source, action, index in steps:
        if action == 0:
            s.assign(source)
        elif action == 1 and index in s.in_flight.get(source, []):
            s.delivered(source, index)
        elif action == 2 and index in s.in_flight.get(source, []):
            s.failed(source, index)
        elif action == 3:
            s.remove(source)
            s.add_source(source)
        flying = {i for chunks in s.in_flight.values() for i in chunks}
        assert set(range(12)) == s.done | set(s.pool) | flying
        assert all(len(chunks) <= 3 for chunks in s.in_flight.values())
        assert not set(s.pool) & (flying | s.done)
