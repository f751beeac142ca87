"""Leaving the swarm: the ledger's ``Leave`` (a table of who may remove whom), and real
``swarm-node`` processes: of four validators, a dead one is removed by the operator and one
leaves on SIGTERM (``--leave-on-exit``); the remaining two still commit, which with four
seats they could not."""

from __future__ import annotations

import functools
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives.serialization import Encoding

import swarmlearn.consensus.tendermint.simulation as bft
from swarmlearn.cli.main import main
from swarmlearn.consensus.ledger.app import SwarmApp
from swarmlearn.consensus.ledger.txs import CreateContract, Join, Leave
from swarmlearn.consensus.tendermint.events import Committed, SubmitTx
from swarmlearn.consensus.tendermint.types import Block, BlockHeader
from swarmlearn.p2p.certs import create_ca, issue_certificate
from swarmlearn.p2p.identity import IdentityPaths, Role, load_identity
from swarmlearn.p2p.wire import Message
from swarmlearn.roles.api.messages import NodeStatus
from swarmlearn.sim import Simulator
from swarmlearn.sim.checkers import Checker
from swarmlearn.sim.scenarios import node_names
from tests.test_real_swarm import _submit, make_pki, node_process, wait_for
from tests.test_swarm_app import AT_T0, CHAIN, T0, Swarm, der, signed

pytestmark = pytest.mark.sim

ROLES = {
    "sn1": [Role.SN, Role.SL],
    "sn2": [Role.SN, Role.SL],
    "a": [Role.SL],
    "op": [Role.SWCI],
    "late": [Role.SL],
}


@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory) -> Swarm:
    root = tmp_path_factory.mktemp("leave")
    ca = create_ca(root / "ca", now=AT_T0)
    found = {}
    for name, granted in ROLES.items():
        issued = issue_certificate(ca, name, root / "ca", hosts=[], roles=granted, now=AT_T0)
        found[name] = load_identity(
            IdentityPaths(issued.cert_path, issued.key_path, root / "ca" / "ca.pem")
        )
    return Swarm(ca.certificate.public_bytes(Encoding.DER), found)


def test_who_may_leave_and_who_may_remove_whom(people: Swarm) -> None:
    app = SwarmApp(CHAIN, people.ca_der, T0)
    ids = {name: str(person.peer_id) for name, person in people.people.items()}
    height = 0

    def block(*bodies: tuple[str, Message]) -> list[tuple[str, int]]:
        """Execute one block; each transaction's outcome, and the seat changes (node, power)."""
        nonlocal height
        height += 1
        txs = tuple(signed(people.people[who], body) for who, body in bodies)
        header = BlockHeader(CHAIN, height, T0 + height, "v", b"", b"", b"", b"")
        executed = app.execute_block(Block(header, txs))
        outcomes.extend(app.outcome(tx) or "" for tx in txs)
        return [(v.node, v.power) for v in executed.validator_updates]

    outcomes: list[str] = []
    joins = [(n, Join(f"{n}:1", der(people.people[n]))) for n in ("sn1", "sn2", "a", "op")]
    assert block(*joins) == [(ids["sn1"], 1), (ids["sn2"], 1)]
    table: list[tuple[str, Message, str, list[tuple[str, int]]]] = [
        ("a", Leave(ids["sn1"]), "refused: only an operator (swci) may remove another", []),
        ("late", Leave(), "refused: " + ids["late"][:8] + " is not a member: join first", []),
        ("op", Leave(ids["late"]), "refused: " + ids["late"][:8] + " is neither a member", []),
        ("a", Leave(reason="done"), "ok", []),  # an SL member leaves: no seat to give up
        ("sn2", Leave(), "ok", [(ids["sn2"], 0)]),  # an SN member leaves with its seat
        ("op", Leave(ids["sn1"]), "refused: " + ids["sn1"][:8] + " holds the last", []),
        ("sn1", Leave(), "refused: " + ids["sn1"][:8] + " holds the last validator seat", []),
    ]
    for who, body, outcome, seats in table:
        assert block((who, body)) == seats, (who, body)
        assert outcomes[-1].startswith(outcome), (who, body, outcomes[-1])
    assert set(app.state.members) == {ids["sn1"], ids["op"]}
    assert app.seated == {ids["sn1"]}
    # The operator removes a (dead) SN member; a node that left may join again.
    assert block(("sn2", Join("sn2:1", der(people.people["sn2"])))) == [(ids["sn2"], 1)]
    assert block(("op", Leave(ids["sn2"][:8], "dead"))) == []  # a prefix names nobody
    assert outcomes[-1].startswith("refused:")
    assert block(("op", Leave(ids["sn2"], "dead"))) == [(ids["sn2"], 0)]
    assert block(("sn2", CreateContract("x"))) == []
    assert outcomes[-1] == "refused: " + ids["sn2"][:8] + " is not a member: join first"


class CommittedTxs(Checker):
    """Which node committed which transactions (the simulator delivers every block)."""

    def __init__(self) -> None:
        self.txs: dict[str, set[bytes]] = {}

    def on_deliver(self, node: str, incarnation: int, value: Any, time: float) -> None:
        if isinstance(value, Committed):
            self.txs.setdefault(node, set()).update(value.txs)


@pytest.mark.parametrize("removed", [True, False])
def test_in_the_core_two_removed_seats_of_four_let_the_other_two_commit(removed: bool) -> None:
    """Simulated validators: two of four seats are removed (power 0, as a ``Leave`` does),
    then those two crash; the two left commit. Without the removal they halt (2/4 < 2/3)."""
    nodes = tuple(node_names(4))
    seen = CommittedTxs()
    sim = Simulator(7, nodes, bft.validator_factory(nodes), checkers=[seen])
    sim.start()
    if removed:
        for node in nodes[2:]:
            sim.request(nodes[0], SubmitTx(f"validator:{node}:00:0".encode()), at=0.01)
    sim.request(nodes[0], SubmitTx(b"before=1"), at=0.5)  # the proof block, then this one
    for node in nodes[2:]:
        sim.loop.call_at(1.5, functools.partial(sim.crash, node))
    sim.request(nodes[1], SubmitTx(b"after=1"), at=2.0)
    sim.run(time_limit=8.0)
    assert all(b"before=1" in seen.txs[node] for node in nodes)
    assert [b"after=1" in seen.txs[node] for node in nodes[:2]] == [removed, removed]


NODES = 4


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    return make_pki(tmp_path, NODES)


@pytest.mark.process
def test_a_dead_node_removed_and_one_leaving_on_exit_leave_two_that_commit(
    pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Four seats; sn3 is SIGKILLed and the operator removes it (``swarmlearn ledger leave
    --node``), sn2 stops with ``--leave-on-exit``: sn0 and sn1 still commit. Without the two
    leaves, two of four seats could commit nothing."""
    operator = load_identity(
        IdentityPaths(pki / "operator.pem", pki / "operator-key.pem", pki / "ca.pem")
    )
    data = [tmp_path / f"n{i}" for i in range(NODES)]
    with node_process(pki, "sn0", data[0], "--sentinel", "--listen", "127.0.0.1:0") as (_, port0):
        join = ["--bootstrap", f"127.0.0.1:{port0}", "--listen", "127.0.0.1:0"]
        with (
            node_process(pki, "sn1", data[1], *join) as (_, port1),
            node_process(pki, "sn2", data[2], *join, "--leave-on-exit") as (leaving, port2),
            node_process(pki, "sn3", data[3], *join) as (dead, port3),
        ):
            ports = [port0, port1, port2, port3]
            trio.run(wait_for, operator, ports, "4 validators", _seats(NODES))
            trio.run(_submit, operator, port0, Join("", der(operator)))
            dead.kill()
            dead.wait()
            victim = str(load_identity(_paths(pki, "sn3")).peer_id)
            identity = ["--cert", str(pki / "operator.pem"), "--key", str(pki / "operator-key.pem")]
            identity += ["--cacert", str(pki / "ca.pem")]
            address = f"127.0.0.1:{port1}"
            command = ["ledger", "leave", address, "--node", victim[:10], "--reason", "dead"]
            assert main([*command, *identity]) == 0
            assert "committed at height" in capsys.readouterr().out
            trio.run(wait_for, operator, ports[:3], "3 validators", _seats(NODES - 1))

            leaving.send_signal(signal.SIGTERM)
            out, _ = leaving.communicate(timeout=30)
            assert "left the swarm at height" in out, out
            assert leaving.returncode == 0
            survivors = trio.run(wait_for, operator, ports[:2], "2 validators", _seats(2))
            height = trio.run(_submit, operator, port1, CreateContract("after-the-leaves"))
            assert height > survivors[0].height


def _seats(count: int) -> Callable[[list[NodeStatus]], bool]:
    return lambda statuses: all(len(s.validators) == count for s in statuses)


def _paths(pki: Path, name: str) -> IdentityPaths:
    return IdentityPaths(pki / f"{name}.pem", pki / f"{name}-key.pem", pki / "ca.pem")
