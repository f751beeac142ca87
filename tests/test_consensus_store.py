"""The validator's disk store: records round-trip, fsync where the WAL rules say, torn tails
are cut off with a warning, corruption before the tail stops the node."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from swarmlearn.consensus.tendermint.store import DiskStore, WalCorrupt, frame, read_log
from swarmlearn.consensus.tendermint.types import Status, Step, VoteType
from swarmlearn.consensus.tendermint.wal import Heard, HeightDone, Signed, Started, TimedOut, to_row
from tests.consensus_helpers import block, vote

V = vote("a", VoteType.PREVOTE, 0, block().hash)


def test_records_with_messages_round_trip(tmp_path: Path) -> None:
    store = DiskStore(tmp_path)
    records = [Started(1), Heard(V), TimedOut(1, 0, Step.PROPOSE), Signed(V)]
    for record in records:
        store.persist("wal", record)
    store.persist("blocks", (block(), Status(1, 0, Step.PROPOSE)))
    store.close()
    with DiskStore(tmp_path) as again:
        loaded = again.load()
    assert loaded["wal"] == tuple(records)
    assert loaded["blocks"] == ((block(), Status(1, 0, Step.PROPOSE)),)


def test_own_messages_height_markers_and_blocks_are_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    store = DiskStore(tmp_path)
    store.persist("wal", Heard(V))
    assert synced == []  # a received vote: written, not waited for
    store.persist("wal", Signed(V))
    store.persist("blocks", (block(),))
    store.persist("wal", HeightDone(1))
    assert len(synced) == 3
    store.close()


def test_each_height_gets_a_segment_and_old_ones_go(tmp_path: Path) -> None:
    store = DiskStore(tmp_path)
    for height in range(1, 5):
        store.persist("wal", Started(height))
        store.persist("wal", HeightDone(height))
    store.persist("wal", Started(5))
    store.close()
    assert sorted(p.name for p in tmp_path.glob("wal-*.log")) == [
        "wal-000000000004.log",
        "wal-000000000005.log",
    ]
    with DiskStore(tmp_path) as again:
        assert again.load()["wal"] == (Started(4), HeightDone(4), Started(5))
        # A driver writes the marker, then syncs it in a worker thread: the old segment goes
        # with that sync (an unlink can wait on the journal), not on the event loop's write.
        assert again.write("wal", HeightDone(5))
        again.write("wal", Started(6))
        assert (tmp_path / "wal-000000000004.log").exists()
        again.sync(("wal",))
        assert sorted(p.name for p in tmp_path.glob("wal-*.log")) == [
            "wal-000000000005.log",
            "wal-000000000006.log",
        ]


# The log's framing is the same for every stream: rows, as the store writes a WAL record.
START, HEARD, SIGNED = to_row(Started(1)), to_row(Heard(V)), to_row(Signed(V))


def test_a_torn_tail_is_cut_off_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "log"
    whole = frame(START) + frame(HEARD)
    torn = frame(SIGNED)[:-3]
    path.write_bytes(whole + torn)
    assert read_log(path) == [START, HEARD]
    assert path.read_bytes() == whole + torn  # a reader changes nothing
    with caplog.at_level(logging.WARNING):
        assert read_log(path, repair=True) == [START, HEARD]
    assert "torn tail" in caplog.text
    assert path.read_bytes() == whole  # truncated at the last whole record
    assert read_log(path) == [START, HEARD]


def test_a_flipped_bit_in_the_last_record_is_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "log"
    last = bytearray(frame(SIGNED))
    last[-1] ^= 1
    path.write_bytes(frame(START) + bytes(last))
    assert read_log(path) == [START]


def test_corruption_before_the_tail_stops_the_node(tmp_path: Path) -> None:
    path = tmp_path / "log"
    first = bytearray(frame(HEARD))
    first[20] ^= 0xFF
    path.write_bytes(frame(START) + bytes(first) + frame(SIGNED))
    size = path.stat().st_size
    damaged = r"log: damaged record at byte \d+ \(after 1 whole records\) with records after"
    with pytest.raises(WalCorrupt, match=damaged):
        read_log(path)
    assert path.stat().st_size == size  # nothing was cut
