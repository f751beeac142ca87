"""Real processes, real sockets, real mutual TLS: four swarm-node validators on loopback.

The sentinel creates the chain, three nodes join through it, 50 blocks with transactions are
committed, the sentinel itself is killed with SIGKILL and the chain goes on without it; then
it is restarted from its data directory alone and catches up with the others (about 10 s).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives.serialization import Encoding

from swarmlearn.consensus.ledger.app import sign_transaction
from swarmlearn.consensus.ledger.txs import CreateContract, Join
from swarmlearn.p2p.certs import create_ca, issue_certificate
from swarmlearn.p2p.identity import Identity, IdentityPaths, Role, load_identity
from swarmlearn.p2p.wire import Message
from swarmlearn.roles.api.messages import NodeStatus, StatusRequest, SubmitReply, SubmitRequest
from swarmlearn.roles.node.node import ask

pytestmark = pytest.mark.process

NODES = 4
BLOCKS_WITH_TXS = 50
WAIT_S = 90.0
POLL_S = 0.1


@contextmanager
def node_process(
    pki: Path, name: str, data: Path, *flags: str
) -> Iterator[tuple[subprocess.Popen[str], int]]:
    ident = [
        "--cert",
        str(pki / f"{name}.pem"),
        "--key",
        str(pki / f"{name}-key.pem"),
        "--cacert",
        str(pki / "ca.pem"),
    ]
    command = [
        sys.executable,
        "-m",
        "swarmlearn.roles.node.daemon",
        "--data",
        str(data),
        *ident,
        *flags,
    ]
    command += ["--api", "127.0.0.1:0"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    data.mkdir(parents=True, exist_ok=True)
    with (
        (data / "stderr.log").open("a") as errors,
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=errors, text=True, env=env
        ) as process,
    ):
        try:
            assert process.stdout is not None
            banner = process.stdout.readline()  # blocks until the node listens (or dies)
            assert "listening on /ip4/127.0.0.1/tcp/" in banner, (data / "stderr.log").read_text()
            yield process, int(banner.split("/tcp/")[1].split("/")[0])
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)


async def status(operator: Identity, port: int) -> NodeStatus | None:
    try:
        return await ask(operator, "127.0.0.1", port, StatusRequest(), NodeStatus)
    except (OSError, trio.BrokenResourceError, trio.EndOfChannel, trio.TooSlowError):
        return None


async def wait_for(
    operator: Identity, ports: list[int], check: str, predicate: object
) -> list[NodeStatus]:
    """Poll the nodes (real processes: nothing to wait on but their answers) until ``predicate``."""
    assert callable(predicate)
    found: list[NodeStatus | None] = []
    with trio.move_on_after(WAIT_S):
        for _ in range(int(WAIT_S / POLL_S)):
            found = [await status(operator, port) for port in ports]
            if all(s is not None for s in found) and predicate(found):
                return found  # type: ignore[return-value]
            await trio.sleep(POLL_S)
    seen = [(s.height, s.txs, len(s.validators), len(s.peers)) if s else None for s in found]
    raise AssertionError(f"timed out waiting for {check}: (height, txs, validators, peers) {seen}")


def make_pki(root: Path, nodes: int = NODES, *, operator: bool = True) -> Path:
    """``root/pki``: a CA, ``sn0``.. ``sn{nodes-1}`` (roles sn and sl, host 127.0.0.1) and, with
    ``operator``, an ``operator`` certificate (role swci)."""
    ca = create_ca(root / "pki")
    for index in range(nodes):
        issue_certificate(
            ca, f"sn{index}", root / "pki", hosts=["127.0.0.1"], roles=[Role.SN, Role.SL]
        )
    if operator:
        issue_certificate(ca, "operator", root / "pki", hosts=[], roles=[Role.SWCI])
    return root / "pki"


@pytest.fixture
def swarm_pki(tmp_path: Path) -> Path:
    return make_pki(tmp_path)


def test_four_validators_commit_and_a_killed_one_catches_up(
    swarm_pki: Path, tmp_path: Path
) -> None:
    operator = load_identity(
        IdentityPaths(
            swarm_pki / "operator.pem", swarm_pki / "operator-key.pem", swarm_pki / "ca.pem"
        )
    )
    data = [tmp_path / f"node{i}" for i in range(NODES)]
    with node_process(swarm_pki, "sn0", data[0], "--sentinel", "--listen", "127.0.0.1:0") as (
        sentinel,
        port0,
    ):
        bootstrap = ["--bootstrap", f"127.0.0.1:{port0}"]
        with (
            node_process(swarm_pki, "sn1", data[1], *bootstrap, "--listen", "127.0.0.1:0") as (
                _,
                port1,
            ),
            node_process(swarm_pki, "sn2", data[2], *bootstrap, "--listen", "127.0.0.1:0") as (
                _,
                port2,
            ),
            node_process(swarm_pki, "sn3", data[3], *bootstrap, "--listen", "127.0.0.1:0") as (
                _,
                port3,
            ),
        ):
            ports = [port0, port1, port2, port3]
            trio.run(_exercise, operator, ports, sentinel, swarm_pki, data[0])


async def _submit(operator: Identity, port: int, body: Message) -> int:
    """Sign ``body`` as the operator, submit it, wait until committed; the height."""
    status = await ask(operator, "127.0.0.1", port, StatusRequest(), NodeStatus)
    tx = sign_transaction(operator, status.chain_id, body)
    reply = await ask(operator, "127.0.0.1", port, SubmitRequest(tx, 30.0), SubmitReply)
    assert reply.accepted, reply.reason
    return reply.height


async def _exercise(
    operator: Identity,
    ports: list[int],
    victim: subprocess.Popen[str],
    pki: Path,
    victim_data: Path,
) -> None:
    await wait_for(
        operator, ports, "4 validators", lambda s: all(len(x.validators) == NODES for x in s)
    )
    await _submit(operator, ports[0], Join("", operator.certificate.public_bytes(Encoding.DER)))
    heights = [
        await _submit(operator, ports[index % NODES], CreateContract(f"contract-{index}"))
        for index in range(BLOCKS_WITH_TXS)  # one at a time: each in a block of its own
    ]
    assert len(set(heights)) == BLOCKS_WITH_TXS
    done = await wait_for(
        operator, ports, "every record everywhere", lambda s: len({x.txs for x in s}) == 1
    )
    assert min(x.blocks_with_txs for x in done) >= BLOCKS_WITH_TXS
    target = max(x.height for x in done)
    before = min(x.txs for x in done)

    # The sentinel dies: after genesis it is an ordinary validator, and the chain goes on.
    victim.send_signal(signal.SIGKILL)  # no goodbye, no flush beyond what was fsynced
    victim.wait()
    alive = ports[1:]
    for index in range(60, 80):
        await _submit(operator, alive[index % 3], CreateContract(f"contract-{index}"))
    moved = await wait_for(
        operator,
        alive,
        "progress without the victim",
        lambda s: min(x.txs for x in s) >= before + 20,
    )

    # Restarted from its data directory alone: no --sentinel, no --bootstrap.
    with node_process(pki, "sn0", victim_data, "--listen", f"127.0.0.1:{ports[0]}") as (_, port):
        assert port == ports[0]
        await _submit(operator, ports[1], CreateContract("after-restart"))
        final = await wait_for(
            operator,
            ports,
            "the restarted node caught up",
            lambda s: (
                len({(x.height, x.last_block_hash, x.app_hash) for x in s}) == 1
                and s[0].height > moved[0].height
            ),
        )
    assert final[0].height > target
    assert final[0].txs == before + 21
    assert len(final[0].validators) == NODES
