"""The user guide's promises: the messages docs/troubleshooting.md quotes are the ones the
tools print (run for real here, with throwaway certificates), and a trainer whose node stays
silent is told why instead of getting a bare socket timeout."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import trio

from swarmlearn.errors import ConfigError
from swarmlearn.merge import ModelState, flatten, layout_of
from swarmlearn.roles.local import LocalClient


def test_a_silent_node_gets_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "sl.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()  # accepts the connection (backlog) and never answers
    state = ModelState({"w": np.arange(4, dtype=np.float32)})
    layout = layout_of(state)
    try:
        client = LocalClient(path, timeout_s=0.2)
        with pytest.raises(
            ConfigError, match=r"no word from the swarm node for 0.2 s \(syncTimeout\)"
        ):
            client.sync_round("c", layout, bytes(flatten(state, layout)), min_peers=3)
        client.close()
    finally:
        server.close()


def test_a_broken_connection_is_never_an_empty_reason() -> None:
    from swarmlearn.roles.validator import network_reason as _reason

    assert _reason(trio.BrokenResourceError()) == (
        "connection broken (the node refused our certificate?)"
    )
    assert _reason(trio.EndOfChannel()) == "the node closed the connection"
    assert _reason(OSError(111, "Connection refused")) == "[Errno 111] Connection refused"
