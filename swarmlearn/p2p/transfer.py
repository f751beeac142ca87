"""Chunked bulk transfer, the pieces both drivers share: manifest, assembler, scheduler, messages.

Theory of operation
-------------------
A blob (a model's flat weights) is named by its :class:`BlobManifest`: total size, chunk
size, the BLAKE3 hash of every chunk (:mod:`swarmlearn.digest`), and a root over them::

    root = BLAKE3(b"swarmlearn.blob/1\\0" | u64 total_bytes | u64 chunk_bytes | hash_0 | ...)

(little-endian integers). Whoever knows the root can check a manifest from anyone, and with
the manifest every chunk from anyone. :meth:`BlobManifest.from_merge` reuses the chunk hashes
of a :class:`swarmlearn.merge.manifest.Manifest` (same spans, same hash), so weights
committed in a round are fetched without hashing them again.

An :class:`Assembler` receives one blob into one preallocated buffer. Every chunk is checked
before it counts: index in range, not held yet, exact size, hash as in the manifest. It
keeps a bitset of held chunks (which survives a broken connection, so a fetch resumes with
only the missing chunks, and can be persisted to resume after a restart with
:meth:`Assembler.resume`), and refuses a manifest over its ``bytes_max`` ceiling. Bytes that
were not useful (duplicates, bad chunks) are counted as waste. The bulk path writes straight
into :meth:`Assembler.slot` and then calls :meth:`verify` and :meth:`mark` (verification is
pure, so concurrent lanes hash in parallel and only take a lock to mark).

A :class:`ChunkScheduler` decides which source is asked for which chunk: each source has at
most ``per_source_max`` chunks in flight, different sources get different chunks (lowest
index first), a failed or timed-out chunk goes back to the pool, a banned source's chunks go
back at once, and at the end (nothing left in the pool) an idle source duplicates one chunk
still in flight elsewhere (*endgame*), so one slow source cannot hold up the last chunks.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from swarmlearn.digest import content_digest, content_hasher
from swarmlearn.errors import LocalProtocolError, RemoteProtocolError
from swarmlearn.p2p.messages import Chunk
from swarmlearn.p2p.wire import Message, Payload

BLOB_MAGIC = b"swarmlearn.blob/1\x00"
HASH_BYTES = 32
BytesLike = bytes | bytearray | memoryview

__all__ = ["Chunk"]  # re-exported: the chunk message lives in p2p.messages (tag 0x10)


@dataclass(frozen=True)
class GetManifest(Message, tag=0x20):
    root: bytes


@dataclass(frozen=True)
class ManifestReply(Message, tag=0x21):
    root: bytes
    total_bytes: int
    chunk_bytes: int
    hashes: Payload  # the chunk hashes, concatenated


@dataclass(frozen=True)
class GetChunks(Message, tag=0x22):
    root: bytes
    indexes: tuple[int, ...]


@dataclass(frozen=True)
class NoBlob(Message, tag=0x23):
    root: bytes
    reason: str


class BlobTooLarge(RemoteProtocolError):
    """A manifest over the receiver's ceiling."""


@dataclass(frozen=True)
class BlobManifest:
    total_bytes: int
    chunk_bytes: int
    chunk_hashes: tuple[bytes, ...]
    root: bytes

    @staticmethod
    def compute_root(total_bytes: int, chunk_bytes: int, hashes: Iterable[bytes]) -> bytes:
        digest = content_hasher(BLOB_MAGIC + struct.pack("<QQ", total_bytes, chunk_bytes))
        for chunk_hash in hashes:
            digest.update(chunk_hash)
        return digest.digest()

    @classmethod
    def build(cls, data: BytesLike, chunk_bytes: int) -> BlobManifest:
        """Hash ``data`` chunk by chunk (views of it: nothing is copied)."""
        if chunk_bytes <= 0:
            raise LocalProtocolError("chunk_bytes must be > 0")
        view = memoryview(data).cast("B")
        hashes = tuple(
            content_digest(view[start : start + chunk_bytes])
            for start in range(0, len(view), chunk_bytes)
        )
        return cls(len(view), chunk_bytes, hashes, cls.compute_root(len(view), chunk_bytes, hashes))

    @classmethod
    def from_merge(cls, manifest: object) -> BlobManifest:
        """The blob manifest of a merge :class:`~swarmlearn.merge.manifest.Manifest`."""
        from swarmlearn.merge.manifest import Manifest

        if not isinstance(manifest, Manifest):
            raise LocalProtocolError("expected a swarmlearn.merge.manifest.Manifest")
        layout = manifest.layout
        hashes = manifest.chunk_hashes
        root = cls.compute_root(layout.total_bytes, layout.chunk_bytes, hashes)
        return cls(layout.total_bytes, layout.chunk_bytes, hashes, root)

    @property
    def chunk_count(self) -> int:
        return len(self.chunk_hashes)

    def chunk_span(self, index: int) -> tuple[int, int]:
        start = index * self.chunk_bytes
        return start, min(start + self.chunk_bytes, self.total_bytes)

    def to_message(self) -> ManifestReply:
        hashes = b"".join(self.chunk_hashes)
        return ManifestReply(self.root, self.total_bytes, self.chunk_bytes, hashes)

    @classmethod
    def from_message(cls, reply: ManifestReply, root: bytes) -> BlobManifest:
        """Check a manifest a peer sent against the root we asked for."""
        raw = bytes(reply.hashes)
        total, size = reply.total_bytes, reply.chunk_bytes
        if size <= 0 or total < 0 or len(raw) % HASH_BYTES:
            raise RemoteProtocolError("malformed manifest")
        hashes = tuple(raw[i : i + HASH_BYTES] for i in range(0, len(raw), HASH_BYTES))
        if len(hashes) != -(-total // size) or reply.root != root:
            raise RemoteProtocolError("manifest does not describe the blob asked for")
        if cls.compute_root(total, size, hashes) != root:
            raise RemoteProtocolError("manifest does not hash to its root")
        return cls(total, size, hashes, root)


class Verdict(enum.Enum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"  # held already: harmless, counted as waste
    OUT_OF_RANGE = "out of range"
    WRONG_SIZE = "wrong size"
    BAD_HASH = "bad hash"

    @property
    def is_fault(self) -> bool:
        """Whether the sender is to blame (it sent something the manifest rules out)."""
        return self in (Verdict.OUT_OF_RANGE, Verdict.WRONG_SIZE, Verdict.BAD_HASH)


class Assembler:
    """One blob being received into one buffer (see the module docstring)."""

    def __init__(
        self,
        manifest: BlobManifest,
        *,
        bytes_max: int,
        buffer: bytearray | memoryview | None = None,
    ) -> None:
        if manifest.total_bytes > bytes_max:
            raise BlobTooLarge(
                f"blob of {manifest.total_bytes} bytes exceeds the {bytes_max}-byte ceiling"
            )
        self.manifest = manifest
        if buffer is None:
            buffer = bytearray(manifest.total_bytes)
        if len(buffer) != manifest.total_bytes:
            raise LocalProtocolError(
                f"buffer holds {len(buffer)} bytes, need {manifest.total_bytes}"
            )
        self.buffer = memoryview(buffer).cast("B")
        self._held = bytearray(-(-manifest.chunk_count // 8))
        self.held_count = 0
        self.received_bytes = 0
        self.wasted_bytes = 0

    @property
    def complete(self) -> bool:
        return self.held_count == self.manifest.chunk_count

    def holds(self, index: int) -> bool:
        return bool(self._held[index >> 3] & (1 << (index & 7)))

    def missing(self) -> list[int]:
        return [i for i in range(self.manifest.chunk_count) if not self.holds(i)]

    def bitset(self) -> bytes:
        """Held chunks, bit ``i % 8`` of byte ``i // 8``: what to persist to resume."""
        return bytes(self._held)

    def slot(self, index: int) -> memoryview:
        """The buffer region of chunk ``index`` (to receive into directly)."""
        if not 0 <= index < self.manifest.chunk_count:
            raise LocalProtocolError(f"chunk {index} out of range")
        start, stop = self.manifest.chunk_span(index)
        return self.buffer[start:stop]

    def check(self, index: int, size: int) -> Verdict | None:
        """What is wrong with ``size`` bytes for chunk ``index``, before reading them (None: ok)."""
        if not 0 <= index < self.manifest.chunk_count:
            return Verdict.OUT_OF_RANGE
        start, stop = self.manifest.chunk_span(index)
        if size != stop - start:
            return Verdict.WRONG_SIZE
        return Verdict.DUPLICATE if self.holds(index) else None

    def verify(self, index: int) -> bool:
        """Whether the bytes in chunk ``index``'s slot hash as the manifest says (no state)."""
        return content_digest(self.slot(index)) == self.manifest.chunk_hashes[index]

    def mark(self, index: int, size: int) -> None:
        """Chunk ``index`` (verified, ``size`` bytes) is held."""
        if not self.holds(index):
            self._held[index >> 3] |= 1 << (index & 7)
            self.held_count += 1
        self.received_bytes += size

    def offer(self, index: int, data: BytesLike, digest: bytes | None = None) -> Verdict:
        """Check a received chunk and, if it is good, copy it in and mark it held
        (``digest``: its hash, when the driver hashed it as it arrived)."""
        size = len(data)
        problem = self.check(index, size)
        if problem is None:
            expected = self.manifest.chunk_hashes[index]
            if (content_digest(data) if digest is None else digest) != expected:
                problem = Verdict.BAD_HASH
        if problem is not None:
            self.received_bytes += size
            self.wasted_bytes += size
            return problem
        self.slot(index)[:] = data
        self.mark(index, size)
        return Verdict.ACCEPTED

    def resume(self, bitset: bytes) -> list[int]:
        """Take the chunks ``bitset`` says are already in the buffer, after checking each one;
        returns those that did not verify (they stay missing)."""
        bad = []
        for index in range(self.manifest.chunk_count):
            if index >> 3 < len(bitset) and bitset[index >> 3] & (1 << (index & 7)):
                if self.verify(index):
                    self.mark(index, 0)
                else:
                    bad.append(index)
        return bad


class ChunkScheduler:
    """Which source fetches which chunk (see the module docstring). Sources are names."""

    def __init__(
        self,
        missing: Iterable[int],
        sources: Sequence[str],
        per_source_max: int,
        *,
        endgame: bool = True,
    ) -> None:
        if per_source_max < 1:
            raise LocalProtocolError("per_source_max must be >= 1")
        self.per_source_max = per_source_max
        self.endgame = endgame
        self.pool = sorted(set(missing))  # not held, not in flight
        self.in_flight: dict[str, list[int]] = {source: [] for source in sorted(set(sources))}
        self.banned: set[str] = set()
        self.done: set[int] = set()
        self.fetched_from: dict[str, int] = dict.fromkeys(self.in_flight, 0)

    @property
    def remaining(self) -> int:
        flying = {i for chunks in self.in_flight.values() for i in chunks}
        return len(self.pool) + len(flying - self.done)

    def sources(self) -> list[str]:
        return sorted(self.in_flight)

    def add_source(self, source: str) -> None:
        if source not in self.banned:
            self.in_flight.setdefault(source, [])
            self.fetched_from.setdefault(source, 0)

    def assign(self, source: str) -> list[int]:
        """Chunks for ``source`` to fetch now (possibly none)."""
        flying = self.in_flight.get(source)
        if flying is None:
            return []
        room = self.per_source_max - len(flying)
        taken, self.pool = self.pool[:room], self.pool[room:]
        if self.endgame and not taken and not flying and not self.pool:  # an idle source helps
            elsewhere = sorted(
                {i for s, chunks in self.in_flight.items() if s != source for i in chunks}
                - self.done
            )
            taken = elsewhere[:1]
        flying += taken
        return taken

    def delivered(self, source: str, index: int) -> None:
        self._release(source, index)
        self.done.add(index)
        if source in self.fetched_from:
            self.fetched_from[source] += 1
        for chunks in self.in_flight.values():  # endgame duplicates are no longer needed
            if index in chunks:
                chunks.remove(index)

    def failed(self, source: str, index: int) -> None:
        """A request timed out or its chunk was unusable: the chunk goes back to the pool."""
        self._release(source, index)
        self._back(index)

    def remove(self, source: str, *, ban: bool = False) -> list[int]:
        """Stop using ``source`` (gone, or banned for bad data); its chunks go back."""
        chunks = self.in_flight.pop(source, [])
        if ban:
            self.banned.add(source)
        for index in chunks:
            self._back(index)
        return chunks

    def _release(self, source: str, index: int) -> None:
        chunks = self.in_flight.get(source)
        if chunks is not None and index in chunks:
            chunks.remove(index)

    def _back(self, index: int) -> None:
        flying = any(index in chunks for chunks in self.in_flight.values())
        if index not in self.done and not flying and index not in self.pool:
            self.pool.append(index)
            self.pool.sort()
