"""The driver batches one input's fsyncs, and never sends or delivers ahead of the disk.

A scripted core hands the real :class:`CoreDriver` effect lists like the consensus core's (a
proposer's proposal and prevote; a commit and its end-of-height marker); a real
:class:`DiskStore` underneath counts its fsyncs, and every action is logged in order.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import trio

from swarmlearn.consensus.tendermint.store import DiskStore, read_log
from swarmlearn.consensus.tendermint.types import VoteType
from swarmlearn.consensus.tendermint.wal import Heard, HeightDone, Signed, Started, from_row
from swarmlearn.p2p.driver import CoreDriver
from swarmlearn.p2p.wire import Message
from swarmlearn.sansio import Broadcast, Deliver, Effect, Input, Persist, SetTimer, Start
from tests.consensus_helpers import vote

OWN_A = vote("a", VoteType.PREVOTE, 0, None)  # two votes this node signed
OWN_B = vote("a", VoteType.PRECOMMIT, 0, None)


class Log:
    def __init__(self) -> None:
        self.events: list[str] = []


class CountingStore(DiskStore):
    def __init__(self, directory: Path, log: Log) -> None:
        super().__init__(directory)
        self.log = log

    def write(self, stream: str, record: Any) -> bool:
        self.log.events.append(f"write {stream} {record.KIND if stream == 'wal' else 'block'}")
        return super().write(stream, record)

    def sync(self, streams: Iterable[str]) -> None:
        self.log.events.append("sync " + ",".join(sorted(streams)))
        super().sync(streams)


class Outbox:
    def __init__(self, log: Log) -> None:
        self.log = log

    def send(self, peer: str, message: Message) -> None:
        assert message in (OWN_A, OWN_B)
        self.log.events.append(f"send {'A' if message == OWN_A else 'B'}")

    def peers(self) -> list[str]:
        return ["b"]


class Scripted:
    """A core that answers its one input with ``effects``."""

    def __init__(self, effects: list[Effect]) -> None:
        self.effects = effects

    def handle(self, event: Input, now: float) -> list[Effect]:
        return self.effects


def drive(tmp_path: Path, effects: list[Effect]) -> tuple[list[str], CountingStore]:
    log = Log()
    store = CountingStore(tmp_path / "ledger", log)

    async def main() -> None:
        driver = CoreDriver(
            Scripted(effects),
            Outbox(log),
            store,
            lambda value: log.events.append(f"deliver {value}"),
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(driver.run, Start())
            nursery.cancel_scope.cancel()

    trio.run(main)
    return log.events, store


def test_a_proposal_and_its_prevote_share_one_fsync_before_either_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsyncs: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        fsyncs.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    events, store = drive(
        tmp_path,
        [
            Persist("wal", Started(1)),
            Persist("wal", Signed(OWN_A)),
            Broadcast(OWN_A, None),
            Persist("wal", Signed(OWN_B)),
            Broadcast(OWN_B, None),
        ],
    )
    assert events == [
        "write wal start",
        "write wal own",
        "write wal own",
        "sync wal",
        "send A",
        "send B",
    ]
    assert len(fsyncs) == 1
    store.close()
    records = [from_row(row) for row in read_log(tmp_path / "ledger" / "wal-000000000001.log")]
    assert records == [Started(1), Signed(OWN_A), Signed(OWN_B)]


def test_a_commit_is_delivered_once_its_block_is_durable_and_the_marker_synced_after(
    tmp_path: Path,
) -> None:
    events, store = drive(
        tmp_path,
        [
            Persist("wal", Heard(OWN_A)),
            Persist("blocks", ("block", 1)),
            Deliver("committed 1"),
            Persist("wal", HeightDone(1)),
            SetTimer("next-height", 0.0),
        ],
    )
    assert events == [
        "write wal msg",
        "write blocks block",
        "write wal height",
        "sync blocks",  # the block, and only it, before the commit is delivered
        "deliver committed 1",
        "sync wal",  # the ended segment with its marker, before anything more happens
    ]
    store.close()
    ended = [from_row(row) for row in read_log(tmp_path / "ledger" / "wal-000000000001.log")]
    assert ended == [Heard(OWN_A), HeightDone(1)]
    assert (tmp_path / "ledger" / "wal-000000000002.log").exists()


def test_inputs_without_durable_records_never_wait_for_the_disk(tmp_path: Path) -> None:
    events, store = drive(tmp_path, [Persist("wal", Heard(OWN_A)), Deliver("x")])
    assert events == ["write wal msg", "deliver x"]
    store.close()


def test_persist_alone_is_still_durable_on_return(tmp_path: Path) -> None:
    store = DiskStore(tmp_path)
    store.persist("wal", Signed(OWN_A))
    store.persist("wal", HeightDone(1))
    store.persist("wal", Signed(OWN_B))
    assert store.load()["wal"] == (Signed(OWN_A), HeightDone(1), Signed(OWN_B))
    store.close()
