"""A training script started before its node waits for the node's local endpoint.

Scripts and daemons are often started together (a shell script, a compose file, SWOP), and a
script may come first. ``SwarmCallback`` then waits for the socket: it tries to connect every
``POLL_S``, says so every ``SAY_EVERY_S`` (where it looks, how long it has waited, how long it
will), and gives up after ``wait_s`` with one line naming the path and how to point the
script at its node. Clock and sleep are handed in (tests run it without waiting).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from swarmlearn.errors import ConfigError

#: The longest a script waits for its node's socket (its syncTimeout when that is shorter).
NODE_WAIT_S = 300.0
SAY_EVERY_S = 10.0
POLL_S = 0.2

T = TypeVar("T")


def connect_when_ready(
    path: Path,
    connect: Callable[[Path], T],
    wait_s: float,
    say: Callable[[str], None],
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] = time.sleep,
) -> T:
    """``connect(path)`` once the node answers there; :class:`ConfigError` (one line) when it
    has not within ``wait_s``. ``connect`` raises :class:`ConfigError` while no node is there."""
    started = clock()
    said_at: float | None = None
    while True:
        try:
            return connect(path)
        except ConfigError:
            waited_s = clock() - started
            if waited_s >= wait_s:
                raise ConfigError(
                    f"no swarm node answered at {path} within {wait_s:g} s: start swarm-node"
                    " (its local endpoint is sl.sock in its --data-dir), or point this script"
                    " at it with SWARM_NODE_SOCKET=PATH or SWARM_DATA_DIR=DIR"
                ) from None
        now = clock()
        if said_at is None or now - said_at >= SAY_EVERY_S:
            said_at = now
            say(
                f"waiting for the swarm node's local endpoint at {path}"
                f" ({now - started:.0f} s of {wait_s:g} s; is swarm-node starting?)"
            )
        sleep(min(POLL_S, max(0.0, started + wait_s - now)))
