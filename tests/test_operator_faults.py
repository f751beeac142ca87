"""Operator faults end in one line and exit 2, and lose nothing acknowledged (issue 19, 5-6).

A data directory belongs to one daemon (a second one on it is refused, naming the first's pid);
a ledger without its genesis file is refused (and ``--sentinel`` never starts a chain over
one); a block log with a repeated or missing height, or a damaged record, is refused with the
file and the height; a read-only or full directory is one line naming the file. Unit tests
inject the faults (a failing write); real daemons show what an operator sees, and a full disk
mid-run on a small tmpfs stops one node of four while the others go on committing, until
it restarts with the space back and catches up with its state intact.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives.serialization import Encoding

from swarmlearn.consensus.ledger.txs import CreateContract, Join
from swarmlearn.consensus.tendermint.store import (
    REFUSED,
    DiskStore,
    StoreFault,
    WalCorrupt,
    frame,
    read_log,
)
from swarmlearn.consensus.tendermint.types import Block, BlockHeader, Status, Step, tx_root
from swarmlearn.consensus.tendermint.wal import Signed, to_row
from swarmlearn.errors import ConfigError, config_error_in
from swarmlearn.p2p.driver import CoreDriver
from swarmlearn.p2p.identity import Identity, IdentityPaths, load_identity
from swarmlearn.roles.api.messages import NodeStatus, StatusRequest
from swarmlearn.roles.node.datadir import LOCK_FILE, DataDirLock
from swarmlearn.roles.node.node import ValidatorOptions, ask, obtain_genesis
from swarmlearn.sansio import Broadcast, Deliver, Effect, Persist, Start
from tests.consensus_helpers import CHAIN
from tests.test_driver_sync import OWN_A, OWN_B, Log, Outbox, Scripted
from tests.test_real_swarm import _submit, make_pki, wait_for

DAEMON = [sys.executable, "-m", "swarmlearn.roles.node.daemon"]
RUN_S = 60
ENOSPC_LINE = (
    "cannot write (No space left on device); the node stopped and nothing it acknowledged is "
    "lost: free space there and start the node again"
)


def linked(heights: int, tag: int = 0) -> list[Block]:
    """Blocks 1..``heights`` of one chain (``tag`` tells chains apart), each naming the last."""
    blocks, previous = [], b""
    for height in range(1, heights + 1):
        header = BlockHeader(CHAIN, height, 1000 + tag, "a", previous, tx_root(()), b"", b"")
        blocks.append(Block(header, ()))
        previous = blocks[-1].hash
    return blocks


CHAIN_A = linked(20)


def record(height: int, chain: list[Block] = CHAIN_A) -> tuple[object, ...]:
    return (chain[height - 1], Status(height, 0, Step.PROPOSE))


# ---------------------------------------------------------------- the lock


def test_a_second_lock_on_a_data_dir_names_the_holder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = DataDirLock.acquire(data)
    with pytest.raises(ConfigError) as refused:
        DataDirLock.acquire(data)
    assert str(refused.value) == (
        f"--data-dir {data}: in use by another swarm-node (pid {os.getpid()}); a data "
        "directory belongs to one node: stop that one, or give another --data-dir"
    )
    first.release()
    DataDirLock.acquire(data).release()  # released: the next node has it
    assert (data / LOCK_FILE).read_text() == f"{os.getpid()}\n"


def test_a_data_dir_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    data = tmp_path / "file" / "data"
    with pytest.raises(ConfigError) as refused:
        DataDirLock.acquire(data)
    assert str(refused.value) == (
        f"--data-dir {data}: cannot write there (Not a directory); the node keeps its ledger "
        "and socket there: make it writable, or give another --data-dir"
    )


def test_a_filesystem_without_locks_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(ConfigError) as refused:
        DataDirLock.acquire(tmp_path)
    assert str(refused.value) == (
        f"--data-dir {tmp_path}: cannot lock {tmp_path / LOCK_FILE} (No locks available); a "
        "data directory must be on a filesystem with file locks (a local disk)"
    )


# ---------------------------------------------------------------- the block log


def write_blocks(directory: Path, heights: list[int]) -> Path:
    with DiskStore(directory) as store:
        for height in heights:
            store.persist("blocks", record(height))
    return directory / "blocks.log"


@pytest.mark.parametrize(
    ("heights", "what"),
    [
        ([1, 2, 2, 3], "height 2 repeats (after height 2)"),
        ([1, 2, 1], "height 1 repeats (after height 2)"),
        ([1, 3, 4], "height 2 is missing (height 3 follows 1)"),
        ([2, 3], "height 1 is missing (height 2 follows 0)"),
    ],
)
def test_a_block_log_with_a_repeated_or_missing_height_is_refused(
    tmp_path: Path, heights: list[int], what: str
) -> None:
    path = write_blocks(tmp_path, heights)
    with DiskStore(tmp_path) as store, pytest.raises(WalCorrupt) as refused:
        store.load()
    assert str(refused.value) == f"{path}: {what}; {REFUSED}"


def test_a_block_log_in_order_loads(tmp_path: Path) -> None:
    write_blocks(tmp_path, [1, 2, 3])
    with DiskStore(tmp_path) as store:
        assert store.load(CHAIN)["blocks"] == tuple(record(h) for h in (1, 2, 3))


def test_a_block_of_another_chain_is_refused(tmp_path: Path) -> None:
    path = write_blocks(tmp_path, [1, 2])
    with DiskStore(tmp_path) as store:
        store.persist("blocks", record(3, linked(3, tag=1)))  # same heights, another chain
        assert raised(WalCorrupt, store.load) == (
            f"{path}: height 3 does not follow height 2 (a block spliced in?); {REFUSED}"
        )
        assert raised(WalCorrupt, store.load, "another") == (
            f"{path}: height 1 is of chain {CHAIN!r}, not the genesis's 'another'; {REFUSED}"
        )


# ---------------------------------------------------------------- a full disk (injected)


class FillingDisk:
    """``os.write`` on a disk with ``free`` bytes left: a short write, then ENOSPC."""

    def __init__(self, free: int) -> None:
        self.free = free

    def __call__(self, fd: int, data: bytes | memoryview) -> int:
        if self.free <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = os.write(fd, bytes(data[: self.free]))
        self.free -= written
        return written


def test_a_full_disk_is_one_line_and_loses_nothing_acknowledged(tmp_path: Path) -> None:
    three = sum(len(frame(record(height))) for height in (1, 2, 3))
    store = DiskStore(tmp_path, write=FillingDisk(free=three + len(frame(record(4))) // 2))
    acknowledged, fault = persist_until_full(store)
    assert str(fault) == f"{tmp_path / 'blocks.log'}: {ENOSPC_LINE}"
    with pytest.raises(StoreFault):  # the log takes nothing after a failed write
        store.persist("blocks", record(5))
    store.close()  # no second fault on the way out, no retried write
    assert len(acknowledged) == 3
    assert len(read_log(tmp_path / "blocks.log")) == 3  # the half record is a torn tail
    with DiskStore(tmp_path) as again:  # the space is back
        assert again.load()["blocks"] == tuple(acknowledged)
        again.persist("blocks", record(4))
        assert len(again.load()["blocks"]) == 4


def persist_until_full(store: DiskStore) -> tuple[list[object], StoreFault]:
    """The records whose persist returned (durable: acknowledged), and the fault after them."""
    acknowledged: list[object] = []
    for height in range(1, 10):
        try:
            store.persist("blocks", record(height))
        except StoreFault as fault:
            return acknowledged, fault
        acknowledged.append(record(height))
    raise AssertionError("the disk never filled")


def test_a_read_only_ledger_is_one_line(tmp_path: Path) -> None:
    def read_only(fd: int, data: bytes | memoryview) -> int:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    store = DiskStore(tmp_path, write=read_only)
    with pytest.raises(StoreFault) as fault:
        store.persist("wal", Signed(OWN_A))
    store.close()
    assert str(fault.value) == (
        f"{tmp_path / 'wal-000000000001.log'}: cannot write (Read-only file system); the node "
        "stopped and nothing it acknowledged is lost: the filesystem is read-only: mount it "
        "read-write (or give another --data-dir)"
    )


def test_the_fault_is_found_inside_the_nursery_groups() -> None:
    fault = StoreFault("blocks.log: cannot write")
    nested = ExceptionGroup("outer", [ExceptionGroup("inner", [ValueError("x"), fault])])
    assert config_error_in(nested) is fault
    assert config_error_in(ExceptionGroup("other", [ValueError("x")])) is None


def run_driver(store: DiskStore, effects: list[Effect]) -> tuple[list[str], BaseException]:
    """Drive one input whose effects are ``effects`` over ``store``: what was sent or
    delivered, and what stopped the driver."""
    log = Log()

    async def main() -> None:
        driver = CoreDriver(Scripted(effects), Outbox(log), store, log.events.append)
        async with trio.open_nursery() as nursery:
            await nursery.start(driver.run, Start())
            nursery.cancel_scope.cancel()

    with pytest.raises(BaseExceptionGroup) as stopped:
        trio.run(main)
    fault = config_error_in(stopped.value)
    assert fault is not None, stopped.value
    return log.events, fault


EFFECTS: list[Effect] = [
    Persist("wal", Signed(OWN_A)),
    Broadcast(OWN_A, None),
    Persist("wal", Signed(OWN_B)),
    Broadcast(OWN_B, None),
    Deliver("committed"),
]


def test_a_failed_write_stops_the_driver_before_any_effect_of_its_input(
    tmp_path: Path,
) -> None:
    own_a = len(frame(to_row(Signed(OWN_A))))
    store = DiskStore(tmp_path, write=FillingDisk(free=own_a + 5))  # B does not fit
    events, fault = run_driver(store, EFFECTS)
    store.close()
    assert events == []  # A was written, but nothing that follows it ran: nothing sent
    assert str(fault) == f"{tmp_path / 'wal-000000000001.log'}: {ENOSPC_LINE}"
    with DiskStore(tmp_path) as again:
        assert again.load()["wal"] == (Signed(OWN_A),)  # B's half is a torn tail, cut


def test_a_failed_fsync_stops_the_driver_before_it_sends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    store = DiskStore(tmp_path)
    monkeypatch.setattr(os, "fsync", failing_fsync)
    events, fault = run_driver(store, EFFECTS)
    store.close()
    assert events == []
    assert str(fault) == (
        f"{tmp_path / 'wal-000000000001.log'}: cannot sync (Input/output error); the node "
        "stopped and nothing it acknowledged is lost: check the disk, then start the node again"
    )


# ---------------------------------------------------------------- genesis beside a ledger


@pytest.mark.parametrize("sentinel", [True, False])
def test_a_ledger_without_its_genesis_is_refused(tmp_path: Path, sentinel: bool) -> None:
    pki = make_pki(tmp_path, 1, operator=False)
    me = identity(pki, "sn0")
    blocks = write_blocks(tmp_path / "data" / "ledger", [1, 2])
    options = ValidatorOptions(tmp_path / "data", ("127.0.0.1", 0), sentinel=sentinel)
    with pytest.raises(ConfigError) as refused:
        trio.run(obtain_genesis, me, options)
    assert str(refused.value) == missing_genesis(tmp_path / "data", blocks, sentinel=sentinel)
    assert not (tmp_path / "data" / "genesis.cbor").exists()


def test_a_sentinel_never_starts_a_chain_over_another(tmp_path: Path) -> None:
    me = identity(make_pki(tmp_path, 1, operator=False), "sn0")
    data = tmp_path / "data"
    first = ValidatorOptions(data, ("127.0.0.1", 0), sentinel=True, chain_id="lab")
    made = trio.run(obtain_genesis, me, first)
    again = trio.run(obtain_genesis, me, first)  # a restart with the same flags
    assert again == made
    other = ValidatorOptions(data, ("127.0.0.1", 0), sentinel=True, chain_id="other")
    assert raised(ConfigError, trio.run, obtain_genesis, me, other) == (
        f"--chain-id other: {data} holds chain 'lab'; a sentinel never starts a chain over "
        "another: give a fresh --data-dir, or leave out --chain-id to restart 'lab'"
    )


def test_a_damaged_genesis_file_is_one_line(tmp_path: Path) -> None:
    me = identity(make_pki(tmp_path, 1, operator=False), "sn0")
    data = tmp_path / "data"
    options = ValidatorOptions(data, ("127.0.0.1", 0), sentinel=True, chain_id="lab")
    trio.run(obtain_genesis, me, options)
    genesis = data / "genesis.cbor"
    genesis.write_bytes(genesis.read_bytes()[:-7])  # cut short
    assert raised(ConfigError, trio.run, obtain_genesis, me, options) == (
        f"{genesis}: not a genesis file (damaged?); restore it from a backup, or move the "
        "data directory away and --bootstrap afresh"
    )


def missing_genesis(data: Path, blocks: Path, *, sentinel: bool) -> str:
    if sentinel:
        return (
            f"--sentinel: {blocks} holds the ledger of a chain and {data / 'genesis.cbor'} is "
            "missing; a sentinel never starts a new chain over one: restore genesis.cbor, or "
            "give a fresh --data-dir"
        )
    return (
        f"{data / 'genesis.cbor'}: missing, but {blocks} holds the ledger of a chain; restore "
        "genesis.cbor (from a backup), or move the data directory away and --bootstrap afresh"
    )


def identity(pki: Path, name: str) -> Identity:
    return load_identity(
        IdentityPaths(pki / f"{name}.pem", pki / f"{name}-key.pem", pki / "ca.pem")
    )


# ---------------------------------------------------------------- real daemons


def daemon_command(pki: Path, name: str, data: Path, *flags: str) -> list[str]:
    ident = ["--cert", str(pki / f"{name}.pem"), "--key", str(pki / f"{name}-key.pem")]
    ident += ["--cacert", str(pki / "ca.pem")]
    return [*DAEMON, "--data-dir", str(data), *ident, "--api", "none", *flags]


@contextmanager
def daemon(
    pki: Path, name: str, data: Path, errors: Path, *flags: str
) -> Iterator[tuple[subprocess.Popen[str], int, str]]:
    """A running swarm-node (its stderr in ``errors``, outside its data directory, which may
    be full), its ledger port and its ready line; stopped with SIGTERM at the end if still
    running."""
    command = daemon_command(pki, name, data, *flags)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with (
        errors.open("a") as stderr,
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env) as p,
    ):
        try:
            assert p.stdout is not None
            banner = p.stdout.readline()  # blocks until the node listens (or dies)
            assert "listening on /ip4/127.0.0.1/tcp/" in banner, errors.read_text()
            yield p, int(banner.split("/tcp/")[1].split("/")[0]), banner
        finally:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=RUN_S)


def refused(pki: Path, data: Path, *flags: str) -> str:
    """Start a node that must refuse to: its stderr (asserted one line, exit 2)."""
    command = daemon_command(pki, "sn0", data, "--listen", "127.0.0.1:0", *flags)
    done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_S)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    return done.stderr


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The pki and the data directory of a stopped sentinel that committed a few blocks."""
    root = tmp_path_factory.mktemp("chain")
    pki = make_pki(root, 1)
    data = root / "sentinel"
    flags = ("--sentinel", "--chain-id", "faults", "--listen", "127.0.0.1:0")
    with daemon(pki, "sn0", data, root / "sentinel.stderr", *flags) as (_, port, _):
        trio.run(_commit_three, identity(pki, "operator"), port)
    assert len(read_log(data / "ledger" / "blocks.log")) >= 3
    return pki, data


async def _commit_three(operator: Identity, port: int) -> None:
    await _submit(operator, port, Join("", operator.certificate.public_bytes(Encoding.DER)))
    await _submit(operator, port, CreateContract("one"))
    await _submit(operator, port, CreateContract("two"))


def copy_of(chain: tuple[Path, Path], where: Path) -> Path:
    shutil.copytree(chain[1], where, ignore=shutil.ignore_patterns("sl.sock", "*.stderr"))
    return where


@pytest.mark.process
def test_a_second_daemon_on_a_live_data_dir_is_refused(
    chain: tuple[Path, Path], tmp_path: Path
) -> None:
    pki, data = chain[0], copy_of(chain, tmp_path / "data")
    flags = ("--listen", "127.0.0.1:0")
    with daemon(pki, "sn0", data, tmp_path / "first.stderr", *flags) as (first, port, _):
        socket_inode = (data / "sl.sock").stat().st_ino
        for second in ([], ["--sentinel"]):  # refused before it reads or writes anything
            assert refused(pki, data, *second) == (
                f"swarm-node: error: --data-dir {data}: in use by another swarm-node (pid "
                f"{first.pid}); a data directory belongs to one node: stop that one, or give "
                "another --data-dir\n"
            )
        assert (data / "sl.sock").stat().st_ino == socket_inode  # the first one's socket
        status = trio.run(_status, identity(pki, "operator"), port)
        assert first.poll() is None
    with DiskStore(data / "ledger") as store:  # one writer: heights 1, 2, 3, ... only
        assert len(store.load()["blocks"]) == status.height


async def _status(operator: Identity, port: int) -> NodeStatus:
    return await ask(operator, "127.0.0.1", port, StatusRequest(), NodeStatus)


@pytest.mark.process
@pytest.mark.parametrize("sentinel", [True, False])
def test_a_daemon_without_the_genesis_of_its_ledger_is_refused(
    chain: tuple[Path, Path], tmp_path: Path, sentinel: bool
) -> None:
    data = copy_of(chain, tmp_path / "data")
    (data / "genesis.cbor").unlink()
    flags = ["--sentinel", "--chain-id", "another"] if sentinel else []
    line = missing_genesis(data, data / "ledger" / "blocks.log", sentinel=sentinel)
    assert refused(chain[0], data, *flags) == f"swarm-node: error: {line}\n"
    assert not (data / "genesis.cbor").exists()  # no chain was started over the blocks


def spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each record of a log's bytes."""
    found, offset = [], 0
    while offset < len(data):
        end = offset + 8 + int.from_bytes(data[offset : offset + 4], "big")
        found.append((offset, end))
        offset = end
    return found


def damaged(data: bytes, how: str) -> tuple[bytes, str]:
    """``data`` (a block log of 3 or more blocks) damaged ``how``, and what the node says."""
    records = spans(data)
    (_, end1), (start2, end2) = records[0], records[1]
    if how == "duplicated":
        after = len(records)
        return data + data[start2:end2], f"height 2 repeats (after height {after})"
    if how == "gapped":
        return data[:start2] + data[end2:], "height 2 is missing (height 3 follows 1)"
    flipped = bytearray(data)
    flipped[start2 + 12] ^= 0xFF
    return bytes(
        flipped
    ), f"damaged record at byte {end1} (after 1 whole records) with records after it"


@pytest.mark.process
@pytest.mark.parametrize("how", ["duplicated", "gapped", "flipped"])
def test_a_damaged_block_log_is_one_line(
    chain: tuple[Path, Path], tmp_path: Path, how: str
) -> None:
    data = copy_of(chain, tmp_path / "data")
    blocks = data / "ledger" / "blocks.log"
    spoiled, what = damaged(blocks.read_bytes(), how)
    blocks.write_bytes(spoiled)
    assert refused(chain[0], data) == f"swarm-node: error: {blocks}: {what}; {REFUSED}\n"
    assert blocks.read_bytes() == spoiled  # nothing cut or repaired around the damage


@contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (skips the test where mounting is not allowed)."""
    path.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    try:
        done = subprocess.run(mount, capture_output=True, text=True, timeout=RUN_S)
    except FileNotFoundError:
        pytest.skip("no mount command: a small filesystem for the disk faults needs one")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True, timeout=RUN_S)


@pytest.mark.process
def test_a_read_only_data_dir_is_one_line(chain: tuple[Path, Path], tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "mnt", "8m") as mnt:
        data = copy_of(chain, mnt / "data")
        remount = ["mount", "-o", "remount,ro", str(mnt)]
        subprocess.run(remount, check=True, capture_output=True, timeout=RUN_S)
        assert refused(chain[0], data) == (
            f"swarm-node: error: --data-dir {data}: cannot write there (Read-only file "
            "system); the node keeps its ledger and socket there: make it writable, or give "
            "another --data-dir\n"
        )


def fill(directory: Path) -> Path:
    """Fill the filesystem of ``directory`` to the last byte; the file that does it."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    return filler


@pytest.mark.process
@pytest.mark.slow
def test_a_node_on_a_full_disk_stops_in_one_line_and_catches_up_once_space_is_back(
    tmp_path: Path,
) -> None:
    pki = make_pki(tmp_path)
    with small_filesystem(tmp_path / "mnt", "2m") as mnt:
        data = [tmp_path / f"node{i}" for i in range(3)] + [mnt / "node3"]
        logs = [tmp_path / f"node{i}.stderr" for i in range(4)]
        listen = ("--listen", "127.0.0.1:0")
        with daemon(pki, "sn0", data[0], logs[0], "--sentinel", *listen) as (_, port0, _):
            join = ("--bootstrap", f"127.0.0.1:{port0}", *listen)
            with (
                daemon(pki, "sn1", data[1], logs[1], *join) as (_, port1, _),
                daemon(pki, "sn2", data[2], logs[2], *join) as (_, port2, _),
                daemon(pki, "sn3", data[3], logs[3], *join) as (victim, port3, _),
            ):
                swarm = FullDisk(pki, [port0, port1, port2, port3], victim, data[3], logs[3])
                trio.run(swarm.run)


class FullDisk:
    """Node 3 (its data on a small tmpfs) runs out of space mid-run, stops with one line while
    the three others go on committing; started again on the full disk it stops the same way
    (as under a supervisor's restart loop); once space is back it starts: its disk held every
    block it had reported, and it ends with the others' height, block hash and app hash."""

    def __init__(
        self, pki: Path, ports: list[int], victim: subprocess.Popen[str], data: Path, log: Path
    ) -> None:
        self.pki, self.ports, self.victim, self.data, self.log = pki, ports, victim, data, log
        self.operator = identity(pki, "operator")

    async def run(self) -> None:
        ports = self.ports
        await wait_for(
            self.operator, ports, "4 validators", lambda s: all(len(x.validators) == 4 for x in s)
        )
        await _submit(
            self.operator, ports[0], Join("", self.operator.certificate.public_bytes(Encoding.DER))
        )
        reported = (await _status(self.operator, ports[3])).height
        filler = fill(self.data.parent)
        for index in range(10):  # each committed by the others: acknowledged
            await _submit(self.operator, ports[index % 3], CreateContract(f"full-{index}"))
            if self.victim.poll() is not None:
                break
        assert self.victim.wait(timeout=RUN_S) == 2
        self.check_one_line()
        for index in range(3):  # the others go on without it
            await _submit(self.operator, ports[index], CreateContract(f"without-{index}"))
        restart = ("--listen", f"127.0.0.1:{ports[3]}")
        # Still full (a supervisor's restart loop): it stops the same way, before it listens
        # when the replay decided a block that it must store first.
        command = daemon_command(self.pki, "sn3", self.data, *restart)
        with self.log.open("a") as stderr, trio.fail_after(RUN_S):
            again = await trio.run_process(
                command, stdout=subprocess.DEVNULL, stderr=stderr, check=False
            )
        assert again.returncode == 2
        self.check_one_line()
        filler.unlink()
        with daemon(self.pki, "sn3", self.data, self.log, *restart) as (_, _, banner):
            assert int(banner.split(" height ")[1].split()[0]) >= reported
            await _submit(self.operator, ports[0], CreateContract("after"))
            await wait_for(
                self.operator,
                ports,
                "node 3 caught up",
                lambda s: len({(x.height, x.last_block_hash, x.app_hash, x.txs) for x in s}) == 1,
            )

    def check_one_line(self) -> None:
        text = self.log.read_text()
        assert "Traceback" not in text, text
        last = text.splitlines()[-1]
        ledger = self.data / "ledger"
        assert re.fullmatch(
            rf"swarm-node: error: {re.escape(str(ledger))}/(wal-\d{{12}}|blocks)\.log: "
            + re.escape(ENOSPC_LINE),
            last,
        ), text


# ---------------------------------------------------------------- the page quotes them


PAGE = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
PAGE_DATA = "/var/lib/swarm"


def test_the_lines_are_quoted_in_the_operations_page(tmp_path: Path) -> None:
    """docs/operations.md quotes each line word for word (the data directory and the pid
    mapped to the page's), so the page cannot drift from the node."""
    data = tmp_path / "swarm"
    lines = [*_lock_and_genesis_lines(data), *_block_log_lines(data / "ledger")]
    store = DiskStore(tmp_path / "full", write=FillingDisk(free=10))
    lines.append(
        str(persist_until_full(store)[1]).replace(str(tmp_path / "full"), str(data / "ledger"))
    )
    store.close()
    for line in lines:
        shown = line.replace(str(data), PAGE_DATA).replace(f"pid {os.getpid()}", "pid 4242")
        assert f"swarm-node: error: {shown}\n" in PAGE, shown


def raised(kind: type[Exception], call: Callable[..., object], *args: object) -> str:
    with pytest.raises(kind) as caught:
        call(*args)
    return str(caught.value)


def _lock_and_genesis_lines(data: Path) -> list[str]:
    lock = DataDirLock.acquire(data)
    try:
        in_use = raised(ConfigError, DataDirLock.acquire, data)
    finally:
        lock.release()
    me = identity(make_pki(data.parent, 1, operator=False), "sn0")
    write_blocks(data / "ledger", [1])
    lines = [in_use]
    for sentinel in (False, True):
        options = ValidatorOptions(data, ("127.0.0.1", 0), sentinel=sentinel)
        lines.append(raised(ConfigError, trio.run, obtain_genesis, me, options))
    shutil.rmtree(data / "ledger")
    return lines


def _block_log_lines(ledger: Path) -> list[str]:
    lines = []
    for heights in ([*range(1, 10), 7], [1, 3], [1, 2], list(range(1, 15))):
        path = write_blocks(ledger, heights)
        if heights == [1, 2]:
            with DiskStore(ledger) as store:
                store.persist("blocks", record(3, linked(3, tag=1)))
        if len(heights) == 14:  # a flipped byte in block 13
            spoiled = bytearray(path.read_bytes())
            spoiled[spans(bytes(spoiled))[12][0] + 12] ^= 0xFF
            path.write_bytes(spoiled)
        with DiskStore(ledger) as store:
            lines.append(raised(WalCorrupt, store.load))
        shutil.rmtree(ledger)
    return lines
