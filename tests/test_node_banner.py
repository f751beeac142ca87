"""swarm-node papercuts: the ready line names the certificate's roles (and the sentinel) and
writes its address as a multiaddr (``/ip4/``, ``/ip6/``, ``/dns/``); a data directory that
holds another chain than the ``--bootstrap`` node's is refused with one line (a real node)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trio

from swarmlearn.consensus.tendermint.store import DiskStore
from swarmlearn.p2p.certs import create_ca, issue_certificate
from swarmlearn.p2p.identity import Identity, IdentityPaths, Role, load_identity
from swarmlearn.roles.node.node import ValidatorNode, ValidatorOptions, obtain_genesis
from tests.test_real_swarm import node_process


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    ca = create_ca(tmp_path / "pki")
    roles = {"full": [Role.SN, Role.SL, Role.SWOP], "learner": [Role.SL]}
    for name, granted in roles.items():
        issue_certificate(ca, name, tmp_path / "pki", hosts=["127.0.0.1"], roles=granted)
    return tmp_path / "pki"


def identity(pki: Path, name: str) -> Identity:
    return load_identity(
        IdentityPaths(pki / f"{name}.pem", pki / f"{name}-key.pem", pki / "ca.pem")
    )


def ready_line(me: Identity, data: Path, host: str, *, sentinel: bool) -> str:
    options = ValidatorOptions(data, ("127.0.0.1", 0), sentinel=True, chain_id="c1")
    genesis = trio.run(obtain_genesis, me, options)
    shown = ValidatorOptions(data, ("127.0.0.1", 0), sentinel=sentinel)
    with DiskStore(data / "ledger") as store:
        node = ValidatorNode(me, shown, genesis, store, on_ready=print)
        return node._ready_line(host, 30303, "")


@pytest.mark.parametrize(
    ("name", "host", "sentinel", "expected"),
    [
        (
            "full",
            "10.0.0.5",
            True,
            "swarm-node full sentinel (sn,sl,swop) chain c1 height 0 "
            "listening on /ip4/10.0.0.5/tcp/30303/p2p/",
        ),
        (
            "learner",
            "::1",
            False,
            "swarm-node learner (sl) chain c1 height 0 listening on /ip6/::1/tcp/30303/p2p/",
        ),
        (
            "learner",
            "node-2.lab",
            False,
            "swarm-node learner (sl) chain c1 height 0 listening on /dns/node-2.lab/tcp/30303/p2p/",
        ),
    ],
)
def test_the_ready_line_names_the_roles_and_the_address_kind(
    pki: Path, tmp_path: Path, name: str, host: str, sentinel: bool, expected: str
) -> None:
    me = identity(pki, name)
    line = ready_line(me, tmp_path / "data", host, sentinel=sentinel)
    assert line == expected + str(me.peer_id)


@pytest.mark.process
def test_a_data_dir_of_another_chain_is_refused_with_one_line(pki: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    options = ValidatorOptions(old, ("127.0.0.1", 0), sentinel=True, chain_id="old-chain")
    trio.run(obtain_genesis, identity(pki, "learner"), options)  # a chain from an earlier swarm
    sentinel = ["--sentinel", "--chain-id", "new-chain", "--listen", "127.0.0.1:0"]
    with node_process(pki, "full", tmp_path / "sentinel", *sentinel) as (_, port):
        ident = ["--cert", str(pki / "learner.pem"), "--key", str(pki / "learner-key.pem")]
        command = [sys.executable, "-m", "swarmlearn.roles.node.daemon", "--data-dir", str(old)]
        command += [*ident, "--cacert", str(pki / "ca.pem"), "--listen", "127.0.0.1:0"]
        command += ["--bootstrap", f"127.0.0.1:{port}", "--api", "none"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"swarm-node: error: --data-dir {old}: holds chain 'old-chain'")
    assert "'new-chain'" in done.stderr
    assert f"use a fresh --data-dir, or remove {old / 'ledger'}" in done.stderr
