"""The user guide's promises: the messages docs/troubleshooting.md quotes are the ones the
tools print (run for real here, with throwaway certificates), and a trainer whose node stays
silent is told why instead of getting a bare socket timeout."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trio

from swarmlearn.errors import ConfigError
from swarmlearn.merge import ModelState, flatten, layout_of
from swarmlearn.roles.local.endpoint import LocalClient
from tests.conftest import Pki


@pytest.mark.process
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
            ConfigError,
            match=r"the round did not end within syncTimeout=0.2 s from the start of the sync",
        ):
            client.sync_round("c", layout, bytes(flatten(state, layout)), min_peers=3)
        client.close()
    finally:
        server.close()


def test_a_broken_connection_is_never_an_empty_reason() -> None:
    from swarmlearn.roles.node.node import network_reason as _reason

    assert _reason(trio.BrokenResourceError()) == (
        "connection broken (the node refused our certificate?)"
    )
    assert _reason(trio.EndOfChannel()) == "the node closed the connection"
    assert _reason(OSError(111, "Connection refused")) == "[Errno 111] Connection refused"
    assert _reason(trio.TooSlowError()) == "no answer within 30 s"


@pytest.mark.process
def test_a_socket_left_by_a_stopped_node_is_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "sl.sock"
    left = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    left.bind(str(path))  # the file stays; nobody listens (a node that stopped)
    left.close()
    with pytest.raises(ConfigError, match=r"sl.sock: no swarm node answers here"):
        LocalClient(path, timeout_s=1.0)


@pytest.mark.process
@pytest.mark.parametrize("busy", ["--listen", "--api", "--lane-port"])
def test_a_port_in_use_is_one_line_naming_the_flag(pki: Pki, tmp_path: Path, busy: str) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    address = f"127.0.0.1:{taken.getsockname()[1]}"
    if busy == "--lane-port":
        address = str(taken.getsockname()[1])  # a port on the --listen host
    ports = {"--listen": "127.0.0.1:0", "--api": "127.0.0.1:0", "--lane-port": "0", busy: address}
    paths = pki.sn.paths
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "swarmlearn",
                "node",
                "--sentinel",
                "--data-dir",
                str(tmp_path / "node"),
                "--cert",
                str(paths.cert),
                "--key",
                str(paths.key),
                "--cacert",
                str(paths.ca),
                "--listen",
                ports["--listen"],
                "--api",
                ports["--api"],
                "--lane-port",
                ports["--lane-port"],
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        taken.close()
    assert done.returncode == 2
    assert (
        done.stderr
        == f"swarmlearn: error: {busy} {address}: cannot listen (Address already in use)\n"
    )
