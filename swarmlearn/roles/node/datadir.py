"""A data directory belongs to one node: the lock that says so, and what a start must find.

Theory of operation
-------------------
Everything a node writes lives in its data directory: ``genesis.cbor``, the ledger
(``ledger/blocks.log`` and the WAL segments), the local socket ``sl.sock``, the p2p peers
file, SWOP's task folders. Two processes on one directory would each append blocks to the
same log, replace each other's socket and record two addresses for one identity, so the
first thing a node does, before it reads or writes anything there, is take an exclusive
``flock`` on :data:`LOCK_FILE` and hold it for its whole life. The kernel drops the lock when
the process ends, however it ends (a SIGKILL leaves no stale lock to clean up); the pid
written into the file is only for the message that the second process prints.

At start, a directory whose ledger holds records but whose ``genesis.cbor`` is gone is
refused (:func:`check_genesis_beside_ledger`): the blocks belong to a chain this node can no
longer name, and ``--sentinel`` must never start a new chain over them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import Final

from swarmlearn.errors import ConfigError

LOCK_FILE: Final = "swarm-node.lock"
GENESIS_FILE: Final = "genesis.cbor"
LEDGER_DIR: Final = "ledger"


class DataDirLock:
    """The exclusive lock on a data directory, held from :meth:`acquire` to :meth:`release`."""

    def __init__(self, directory: Path, fd: int) -> None:
        self.directory = directory
        self._fd = fd

    @classmethod
    def acquire(cls, directory: Path) -> DataDirLock:
        """Lock ``directory`` (made if missing), or one line naming the process that holds it
        (or why the directory cannot be written)."""
        path = directory / LOCK_FILE
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:
            full = error.errno in (errno.ENOSPC, errno.EDQUOT)
            remedy = "free space there" if full else "make it writable"
            raise ConfigError(
                f"--data-dir {directory}: cannot write there ({error.strerror or error}); the "
                f"node keeps its ledger and socket there: {remedy}, or give another --data-dir"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise ConfigError(
                f"--data-dir {directory}: in use by another swarm-node ({holder}); a data "
                "directory belongs to one node: stop that one, or give another --data-dir"
            ) from None
        except OSError as error:  # no locks on this filesystem (some network mounts)
            os.close(fd)
            raise ConfigError(
                f"--data-dir {directory}: cannot lock {path} ({error.strerror or error}); a "
                "data directory must be on a filesystem with file locks (a local disk)"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # the pid is only for the message of a second node: the lock holds anyway
        return cls(directory, fd)

    def release(self) -> None:
        """Let another node have the directory (closing the file drops the lock)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        pid = int(os.pread(fd, 32, 0).decode().strip())
        return f"pid {pid}"
    return "pid unknown"


def ledger_records(data_dir: Path) -> Path | None:
    """The first file of the ledger in ``data_dir`` that holds records (None: none does)."""
    ledger = data_dir / LEDGER_DIR
    for path in sorted(ledger.glob("*.log")) if ledger.is_dir() else ():
        with contextlib.suppress(OSError):
            if path.stat().st_size > 0:
                return path
    return None


def check_genesis_beside_ledger(data_dir: Path, *, sentinel: bool) -> None:
    """Refuse a ledger whose genesis file is missing (and ``--sentinel`` over it above all)."""
    genesis = data_dir / GENESIS_FILE
    if genesis.exists():
        return
    held = ledger_records(data_dir)
    if held is None:
        return
    if sentinel:
        raise ConfigError(
            f"--sentinel: {held} holds the ledger of a chain and {genesis} is missing; a "
            f"sentinel never starts a new chain over one: restore {GENESIS_FILE}, or give a "
            "fresh --data-dir"
        )
    raise ConfigError(
        f"{genesis}: missing, but {held} holds the ledger of a chain; restore {GENESIS_FILE} "
        "(from a backup), or move the data directory away and --bootstrap afresh"
    )
