"""The lane thread pool (p2p/lane.py): bounded, every end counted, a failure logged in full,
sockets its threads hold shut down at close, threads that outlive the join counted."""

from __future__ import annotations

import logging
import socket
import threading

import pytest

from swarmlearn.p2p.lane import LaneThreads

WAIT_S = 20.0


def test_a_full_pool_refuses_and_counts() -> None:
    pool = LaneThreads("test", 2)
    release = threading.Event()
    assert pool.start(release.wait, WAIT_S, name="one")
    assert pool.start(release.wait, WAIT_S, name="two")
    assert not pool.start(release.wait, WAIT_S, name="three")
    release.set()
    assert pool.join(WAIT_S) == 0
    assert pool.statistics() == {
        "threads_live": 0,
        "threads_started": 2,
        "threads_refused": 1,
        "threads_ended": 2,
        "threads_failed": 0,
        "threads_leaked": 0,
    }


def test_a_thread_that_raises_is_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> None:
        raise KeyError("a bug")

    pool = LaneThreads("test", 1)
    with caplog.at_level(logging.ERROR, logger="swarmlearn.p2p.lane"):
        assert pool.start(broken, name="broken")
        assert pool.join(WAIT_S) == 0
    assert (pool.ended, pool.failed) == (1, 1)
    assert "thread broken failed" in caplog.text
    assert "KeyError: 'a bug'" in caplog.text  # the traceback, not only a line


def test_close_shuts_down_what_the_threads_hold_and_refuses_more() -> None:
    ours, theirs = socket.socketpair()
    pool = LaneThreads("test", 4)
    got: list[bytes] = []
    held = threading.Event()

    def read(sock: socket.socket) -> None:
        held.set()
        got.append(sock.recv(1))  # blocks: nothing is ever sent

    assert pool.start(read, ours, name="reader", holds=ours)
    assert held.wait(WAIT_S)
    pool.close()
    assert pool.join(WAIT_S) == 0
    assert got == [b""]  # woken by the shutdown, not by the peer
    assert not pool.start(read, ours, name="late")
    ours.close()
    theirs.close()


def test_threads_that_outlive_the_join_are_counted_as_leaked() -> None:
    pool = LaneThreads("test", 1)
    release = threading.Event()
    assert pool.start(release.wait, WAIT_S, name="stuck")
    pool.close()  # it holds no socket: nothing wakes it
    assert pool.join(0.05) == 1
    assert pool.leaked == 1
    release.set()
    assert pool.join(WAIT_S) == 0
