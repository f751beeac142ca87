"""Durable storage for a validator (driver side): the write-ahead log and the block store.

Theory of operation
-------------------
The core asks for durability with ``Persist(stream, record)`` effects; this module makes them
files. Each stream is an append-only log of framed records::

    u32 length | u32 crc32(payload) | payload          (big-endian)

where ``payload`` is CBOR of the record, with wire messages inside stored as their canonical
header bytes under CBOR tag 27001; a WAL record (:mod:`swarmlearn.consensus.tendermint.wal`) is
written as its row ``(KIND, *fields)`` and read back typed. The ``wal`` stream is cut into one
segment per height (``wal-<height>.log``): when the core persists the end-of-height marker the
next segment starts and older ones are removed (by the fsync that makes the marker durable,
off the event loop), so replay reads only the unfinished height. Blocks go to ``blocks.log``.

Durability follows CometBFT's WAL rules: records the node signed (``Signed``), end-of-height
markers and blocks are fsynced before :meth:`DiskStore.persist` returns (so before the driver
sends anything that follows them); other inputs are written without waiting for the disk.
A driver that has several records to persist for one input batches them: :meth:`DiskStore.write`
each (in order; True for a record that must be durable), then one :meth:`DiskStore.sync` of
the streams it needs durable before its next effect: one fsync per file, not per record.

Reading back: a torn or corrupt *tail* (a crash in the middle of an append) is cut off at the
last whole record, with a warning. A bad record with good records after it is corruption
inside the log: :class:`WalCorrupt` stops the node with the file and offset, because
replaying around it could make the node sign against its own past (a fork). ``blocks.log``
must hold heights 1, 2, 3, ... in order, each block naming the hash of the one before it: a
repeated or missing height, or a block of another chain, is corruption too (a second process
wrote into the directory, or files were spliced), named with the height.

Disk faults: a write, fsync or open that fails (a full disk, a read-only filesystem, an I/O
error) raises :class:`StoreFault`, one line naming the file and the reason. The driver has
not yet run any effect that follows the record (nothing it depends on was sent or
acknowledged), so the node stops there and loses nothing it acknowledged; the half-written
record it leaves is a torn tail, cut off at the next start. Writes go straight to the file
descriptor (no user-space buffer that would try the write again on close).
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final

import cbor2

import swarmlearn.consensus.tendermint.events
import swarmlearn.consensus.tendermint.types  # noqa: F401
from swarmlearn.consensus.tendermint.wal import SYNCED, HeightDone, WalRecord, from_row, to_row
from swarmlearn.errors import ConfigError
from swarmlearn.p2p.wire import Message, decode_header, encode_header

log = logging.getLogger(__name__)

FRAME: Final = struct.Struct(">II")
MESSAGE_TAG: Final = 27001
RECORD_BYTES_MAX: Final = 256 * 1024 * 1024


def must_sync(stream: str, record: Any) -> bool:
    """Whether the store fsyncs ``record`` before the node's next effect (the WAL rules
    above); the simulator models its disk with the same rule."""
    return stream == "blocks" or (stream == "wal" and isinstance(record, SYNCED))


#: How a record reaches its file: ``os.write``'s shape (tests hand in a failing one).
Write = Callable[[int, bytes | memoryview], int]
#: What an operator can do about each disk fault (the end of :class:`StoreFault`'s line).
FAULT_HINTS: Final = {
    errno.ENOSPC: "free space there and start the node again",
    errno.EDQUOT: "raise the quota or free space, and start the node again",
    errno.EROFS: "the filesystem is read-only: mount it read-write (or give another --data-dir)",
    errno.EACCES: "give the node's user write access (or give another --data-dir)",
    errno.EPERM: "give the node's user write access (or give another --data-dir)",
}
#: The end of every :class:`WalCorrupt` line.
REFUSED: Final = (
    "the node does not start on a damaged log: restore it from a backup, or move the data "
    "directory away and --bootstrap afresh (the blocks come back from the peers)"
)


class WalCorrupt(ConfigError):
    """A log is damaged before its tail: the node must not start on it."""


class StoreFault(ConfigError):
    """A file of the store could not be opened, written or synced: the node stops with this
    one line; nothing it acknowledged is lost."""


def store_fault(path: Path, doing: str, error: OSError) -> StoreFault:
    """The one line for ``error`` while ``doing`` something to ``path``."""
    reason = error.strerror or str(error)
    hint = FAULT_HINTS.get(error.errno or 0, "check the disk, then start the node again")
    return StoreFault(
        f"{path}: cannot {doing} ({reason}); the node stopped and nothing it acknowledged "
        f"is lost: {hint}"
    )


def encode_record(record: Any) -> bytes:
    def default(encoder: Any, value: Any) -> None:
        if isinstance(value, Message):
            encoder.encode(cbor2.CBORTag(MESSAGE_TAG, encode_header(value)))
        else:
            raise TypeError(f"cannot store {type(value).__name__}")

    return bytes(cbor2.dumps(record, default=default, canonical=True))


def decode_record(payload: bytes) -> Any:
    def tag_hook(tag: Any, immutable: bool) -> Any:  # cbor2 6's signature
        if tag.tag == MESSAGE_TAG:
            return decode_header(tag.value)
        return tag

    return _tuples(cbor2.loads(payload, tag_hook=tag_hook))


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def frame(record: Any) -> bytes:
    payload = encode_record(record)
    return FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def _parse(data: bytes, offset: int) -> tuple[Any, int] | None:
    """The record at ``offset`` and the offset after it, or None if it is not whole and sound."""
    if offset + FRAME.size > len(data):
        return None
    length, crc = FRAME.unpack_from(data, offset)
    end = offset + FRAME.size + length
    if length > RECORD_BYTES_MAX or end > len(data):
        return None
    payload = data[offset + FRAME.size : end]
    if zlib.crc32(payload) != crc:
        return None
    try:
        return decode_record(payload), end
    except Exception:  # a record whose CRC matches but does not decode: damaged all the same
        return None


def read_log(path: Path, *, repair: bool = False) -> list[Any]:
    """Every whole record of ``path``. A torn tail ends the list; with ``repair`` (the node
    itself, at start) it is also cut off the file, with a warning."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise store_fault(path, "read", error) from None
    records: list[Any] = []
    offset = 0
    while offset < len(data):
        parsed = _parse(data, offset)
        if parsed is None:
            if _any_record_after(data, offset):
                raise WalCorrupt(
                    f"{path}: damaged record at byte {offset} (after {len(records)} whole "
                    f"records) with records after it; {REFUSED}"
                )
            if repair:
                torn = len(data) - offset
                log.warning("%s: torn tail of %d bytes at byte %d cut off", path, torn, offset)
                try:
                    with path.open("r+b") as file:
                        file.truncate(offset)
                        os.fsync(file.fileno())
                except OSError as error:
                    raise store_fault(path, "cut off its torn tail", error) from None
            break
        record, offset = parsed
        records.append(record)
    return records


def _any_record_after(data: bytes, offset: int) -> bool:
    return any(
        _parse(data, start) is not None for start in range(offset + 1, len(data) - FRAME.size)
    )


def check_blocks(path: Path, blocks: list[Any], chain_id: str | None = None) -> None:
    """``blocks`` (the records of ``path``) hold heights 1, 2, 3, ... in that order, each
    block naming the one before it (and, given ``chain_id``, of that chain), or
    :class:`WalCorrupt` names the first height out of place."""
    previous: Any = None
    for expected, record in enumerate(blocks, start=1):
        what = _out_of_place(expected, record, previous, chain_id)
        if what is not None:
            raise WalCorrupt(f"{path}: {what}; {REFUSED}")
        previous = record[0]


def _out_of_place(expected: int, record: Any, previous: Any, chain_id: str | None) -> str | None:
    """Why ``record`` cannot be block ``expected`` after ``previous`` (None: it can)."""
    block = record[0] if isinstance(record, tuple) and record else None
    header = getattr(block, "header", None)
    height = getattr(header, "height", None)
    if not isinstance(height, int):
        return f"record {expected} is not a block"
    if height < expected:
        return f"height {height} repeats (after height {expected - 1})"
    if height > expected:
        return f"height {expected} is missing (height {height} follows {expected - 1})"
    found_chain = getattr(header, "chain_id", None)
    if chain_id is not None and found_chain != chain_id:
        return f"height {height} is of chain {found_chain!r}, not the genesis's {chain_id!r}"
    if previous is not None and getattr(header, "previous_hash", None) != previous.hash:
        return f"height {height} does not follow height {height - 1} (a block spliced in?)"
    return None


class AppendLog:
    """One append-only file; every failure to open, write or sync it is a :class:`StoreFault`."""

    def __init__(self, path: Path, write: Write = os.write) -> None:
        self.path = path
        self._write = write
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            self._fd = os.open(path, flags, 0o644)
        except OSError as error:
            raise store_fault(path, "open it for writing", error) from None
        self.unsynced = False  # holds a record that must be durable and is not yet
        self.failed: StoreFault | None = None  # once a write failed, the file takes no more

    def append(self, record: Any, *, sync: bool) -> None:
        self.write(record, durable=sync)
        if sync:
            self.sync()

    def write(self, record: Any, *, durable: bool) -> None:
        """Hand ``record`` to the OS (it survives a crash of the node, not of the machine)."""
        if self.failed is not None:
            raise self.failed
        data = memoryview(frame(record))
        try:
            while data:
                written = self._write(self._fd, data)
                if written <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                data = data[written:]
        except OSError as error:
            self.failed = store_fault(self.path, "write", error)
            raise self.failed from None
        self.unsynced |= durable

    def sync(self) -> None:
        if self.failed is not None:
            raise self.failed
        if self.unsynced:
            try:
                os.fsync(self._fd)
            except OSError as error:
                self.failed = store_fault(self.path, "sync", error)
                raise self.failed from None
            self.unsynced = False

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class DiskStore:
    """The streams ``wal`` and ``blocks`` of one node, in ``directory``."""

    def __init__(self, directory: Path, *, write: Write = os.write) -> None:
        self.directory = directory
        self._write = write
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise store_fault(directory, "create the directory", error) from None
        self._blocks = AppendLog(directory / "blocks.log", write)
        segments = self._segments()
        height = segments[-1][0] if segments else 1
        self._wal = AppendLog(self._segment_path(height), write)
        self._retired: list[AppendLog] = []  # ended WAL segments with records to fsync
        self._obsolete_below = 0  # WAL segments of heights below this are to be removed

    def _segment_path(self, height: int) -> Path:
        return self.directory / f"wal-{height:012d}.log"

    def _segments(self) -> list[tuple[int, Path]]:
        found = []
        for path in self.directory.glob("wal-*.log"):
            try:
                found.append((int(path.stem.removeprefix("wal-")), path))
            except ValueError:
                continue
        return sorted(found)

    def load(self, chain_id: str | None = None) -> dict[str, tuple[Any, ...]]:
        """What was persisted, per stream (the ``Start`` input of the core); the blocks are
        checked (:func:`check_blocks`, of ``chain_id`` when given)."""
        wal: list[WalRecord] = []
        for _, path in self._segments():
            try:
                wal += [from_row(row) for row in read_log(path, repair=True)]
            except (ValueError, TypeError) as error:  # a row no record type reads
                raise WalCorrupt(f"{path}: {error}; {REFUSED}") from None
        blocks = read_log(self.directory / "blocks.log", repair=True)
        check_blocks(self.directory / "blocks.log", blocks, chain_id)
        return {"blocks": tuple(blocks), "wal": tuple(wal)}

    def persist(self, stream: str, record: Any) -> None:
        """Write ``record``; if it must be durable, fsync it before returning."""
        if self.write(stream, record):
            self.sync((stream,))

    def write(self, stream: str, record: Any) -> bool:
        """Append ``record`` without waiting for the disk; True if it must be made durable
        (by :meth:`sync` of its stream) before anything that follows it is done."""
        if stream == "blocks":
            self._blocks.write(record, durable=True)
            return True
        if stream != "wal":
            raise ValueError(f"unknown stream {stream!r}")
        durable = must_sync(stream, record)
        self._wal.write(to_row(record), durable=durable)
        if isinstance(record, HeightDone):
            self._next_segment(record.height + 1)
        return durable

    def sync(self, streams: Iterable[str]) -> None:
        """fsync what was written to ``streams`` (one fsync per file that needs one)."""
        for stream in set(streams):
            if stream == "blocks":
                self._blocks.sync()
            elif stream == "wal":
                for ended in self._retired:
                    ended.sync()
                    ended.close()
                self._retired = []
                self._wal.sync()
                if self._obsolete_below:
                    self._remove_obsolete()

    def _next_segment(self, height: int) -> None:
        if self._wal.unsynced:
            self._retired.append(self._wal)  # closed once synced
        else:
            self._wal.close()
        self._wal = AppendLog(self._segment_path(height), self._write)
        self._obsolete_below = height - 1  # removed by the next sync (a driver's worker thread)

    def _remove_obsolete(self) -> None:
        """Remove the segments before the last whole height: an unlink can wait on the
        filesystem's journal (10 ms a height, measured), so it runs with the fsync, off the
        node's event loop, and only once the end-of-height marker is durable."""
        below, self._obsolete_below = self._obsolete_below, 0
        for old_height, path in self._segments():
            if old_height < below:
                path.unlink(missing_ok=True)

    def close(self) -> None:
        """Sync and close; after a fault, only close (the fault was raised already)."""
        logs = [self._wal, self._blocks, *self._retired]
        try:
            if not any(append_log.failed for append_log in logs):
                self.sync(("wal", "blocks"))
        finally:
            for append_log in logs:
                append_log.close()
            self._retired = []

    def __enter__(self) -> DiskStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
