"""Embedded mode: three training processes, each with its swarm node inside (no swarm-node
daemon anywhere), real TLS on loopback; they end with bit-identical weights that beat each
node's local-only model. And the mistakes a user can make choosing the mode."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from swarmlearn.callback.core import SwarmError
from swarmlearn.callback.pytorch import SwarmCallback
from swarmlearn.errors import ConfigError
from swarmlearn.p2p.certs import create_ca, issue_certificate
from swarmlearn.p2p.identity import Role
from tests.embedded_trainer import train
from tests.test_callback_torch import accuracy, net

NODES = 3
TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def write_configs(tmp_path: Path) -> list[Path]:
    pki = tmp_path / "pki"
    ca = create_ca(pki)
    ports = [free_port() for _ in range(NODES)]
    configs = []
    for node in range(NODES):
        issue_certificate(ca, f"n{node}", pki, hosts=["127.0.0.1"], roles=[Role.SN, Role.SL])
        join = "sentinel = true" if node == 0 else f'bootstrap = "127.0.0.1:{ports[0]}"'
        config = tmp_path / f"n{node}.toml"
        config.write_text(
            f'listen = "127.0.0.1:{ports[node]}"\n'
            f'data-dir = "{tmp_path / f"n{node}"}"\n'
            'api = "none"\n'
            f"{join}\n"
            f'cert = "{pki / f"n{node}.pem"}"\n'
            f'key = "{pki / f"n{node}-key.pem"}"\n'
            f'cacert = "{pki / "ca.pem"}"\n'
        )
        configs.append(config)
    return configs


def start(node: int, config: Path, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.embedded_trainer",
            str(node),
            str(NODES),
            str(config),
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"},
        cwd=Path(__file__).parent.parent,
    )


@pytest.mark.process
def test_three_embedded_nodes_train_one_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configs = write_configs(tmp_path)
    outs = [tmp_path / f"n{node}.pt" for node in range(NODES)]
    sentinel = start(0, configs[0], outs[0])
    assert sentinel.stdout is not None
    seen = []
    for line in sentinel.stdout:  # the sentinel listens before the others bootstrap from it
        seen.append(line)
        if "listening on" in line:
            break
    else:
        pytest.fail("".join(seen))
    others = [start(node, configs[node], outs[node]) for node in range(1, NODES)]
    logs = [sentinel.communicate(timeout=TIMEOUT_S)[0]]
    logs += [process.communicate(timeout=TIMEOUT_S)[0] for process in others]
    for process, log in zip([sentinel, *others], logs, strict=True):
        assert process.returncode == 0, log
    weights = [torch.load(out) for out in outs]
    for name, tensor in weights[0].items():
        for other in weights[1:]:
            assert torch.equal(tensor, other[name]), name  # bit for bit, buffers included
    assert "merged in" in logs[1]  # the per-round log line
    # the same script alone (SWARM_LOOPBACK): each node lacks a third of the digits
    monkeypatch.setenv("SWARM_LOOPBACK", "True")
    alone = []
    for node in range(NODES):
        train(node, NODES, str(configs[node]), tmp_path / f"alone{node}.pt")
        alone.append(accuracy(torch.load(tmp_path / f"alone{node}.pt")))
    assert max(alone) < 0.75, alone
    assert accuracy(weights[0]) > max(alone) + 0.1, (accuracy(weights[0]), alone)


def test_node_config_must_exist(tmp_path: Path) -> None:
    with pytest.raises(SwarmError, match=r"nodeConfig .*missing\.toml: no such file"):
        SwarmCallback(10, 2, model=net(), nodeConfig=str(tmp_path / "missing.toml"))


def test_daemon_and_embedded_modes_exclude_each_other(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('listen = "127.0.0.1:0"\n')
    with pytest.raises(SwarmError, match=r"give nodeSocket .* or nodeConfig .*, not both"):
        SwarmCallback(10, 2, model=net(), nodeConfig=str(config), nodeSocket="sl.sock")


def test_an_embedded_node_that_cannot_start_says_why(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    lines = [
        f'{key} = "{tmp_path / name}"' for key, name in (("cert", "none.pem"), ("key", "k.pem"))
    ]
    config.write_text("\n".join([*lines, f'cacert = "{tmp_path / "ca.pem"}"', ""]))
    with pytest.raises(
        ConfigError, match=r"nodeConfig .*node\.toml: CA certificate .*ca\.pem: file does not exist"
    ):
        SwarmCallback(10, 2, model=net(), nodeConfig=str(config))
