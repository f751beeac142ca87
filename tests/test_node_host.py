"""The node's one p2p host: its connection set is the peer table's, bounded, not a full mesh;
one place decides who is a peer; one-shot clients share the port.

In-process swarm nodes on loopback (real TLS sockets, one trio loop): six validators whose
peer tables allow 1 outbound and 3 connections in all commit every transaction over gossip
while no node holds N-1 = 5 connections; an operator's certificate gets no link (one
``Goodbye`` saying why) but its one-shot requests are answered on the same port.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from swarmlearn.consensus.ledger.app import DEFAULT_CONTRACT, sign_transaction
from swarmlearn.consensus.ledger.txs import PerfData
from swarmlearn.p2p.certs import create_ca, issue_certificate
from swarmlearn.p2p.identity import Role
from swarmlearn.p2p.messages import Goodbye, Ping, Pong
from swarmlearn.p2p.peertable import PeerTableConfig
from swarmlearn.p2p.transport import dial
from swarmlearn.roles.node.node import ValidatorNode, ValidatorOptions
from swarmlearn.roles.sl.core import RoundChunk
from tests.api_helpers import identity
from tests.test_forged_txs import drained, link_connection

NODES = 6
LIMITS = PeerTableConfig(outbound_target=1, connections_max=3)
WAIT_S = 120.0  # six ledgers in one loop on a busy 2-core machine
POLL_S = 0.05


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("host")
    ca = create_ca(root)
    for index in range(NODES):
        issue_certificate(ca, f"n{index}", root, hosts=["127.0.0.1"], roles=[Role.SN, Role.SL])
    issue_certificate(ca, "op", root, hosts=[], roles=[Role.SWCI])
    return root


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Poll the in-process nodes (they move on their own tasks) until ``predicate``."""
    with trio.move_on_after(WAIT_S):
        for _ in range(int(WAIT_S / POLL_S)):
            if predicate():
                return
            await trio.sleep(POLL_S)
    raise AssertionError(f"not within {WAIT_S} s: {what}")


@pytest.mark.process
async def test_six_validators_commit_over_gossip_with_at_most_three_connections_each(
    pki: Path, tmp_path: Path
) -> None:
    nodes: list[ValidatorNode] = []
    most = 0

    def seen_connections() -> int:
        nonlocal most
        most = max([most, *(len(node.network.peers()) for node in nodes)])
        return most

    async with trio.open_nursery() as nursery:
        for index in range(NODES):
            bootstrap = None if not nodes else nodes[0].address
            options = ValidatorOptions(
                tmp_path / f"n{index}",
                ("127.0.0.1", 0),
                sentinel=not nodes,
                bootstrap=bootstrap,
                peers=LIMITS,
            )
            node = await ValidatorNode.open(
                identity(pki, f"n{index}"), options, on_ready=lambda line: None
            )
            await nursery.start(node.run)
            nodes.append(node)
        await until(
            lambda: all(node.joined() and len(node.core.validators) == NODES for node in nodes),
            "every node holds a seat",
        )
        # Every node commits transactions submitted anywhere, over at most 3 links each.
        txs = []
        for index, node in enumerate(nodes):
            body = PerfData(DEFAULT_CONTRACT, index + 1, 0.5, 0.9, 1, 30)
            tx = sign_transaction(node.identity, node.core.chain_id, body)
            txs.append(tx)
            await node.submit(tx)
        await until(
            lambda: (
                seen_connections() >= 0
                and all(node.app.outcome(tx) == "ok" for node in nodes for tx in txs)
            ),
            "every transaction committed on every node",
        )
        assert 0 < seen_connections() <= LIMITS.connections_max < NODES - 1
        for node in nodes:
            ledger = node.ledger.statistics()
            assert ledger["seated"]
            assert isinstance(ledger["published"], dict)
            assert ledger["published"].get("ledger/votes", 0) > 0  # votes rode gossip
        nursery.cancel_scope.cancel()


@pytest.mark.process
async def test_an_operator_gets_no_link_but_its_requests_are_answered(
    pki: Path, tmp_path: Path
) -> None:
    options = ValidatorOptions(tmp_path / "n0", ("127.0.0.1", 0), sentinel=True)
    node = await ValidatorNode.open(identity(pki, "n0"), options, on_ready=lambda line: None)
    operator = identity(pki, "op")
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        host, port = node.address
        async with await link_connection(operator, host, port) as refused:
            said = await drained(refused)
        assert [type(m) for m in said] == [Goodbye]
        assert isinstance(said[0], Goodbye)
        assert said[0].reason.startswith("not a peer: the certificate grants none of the roles")
        assert node.network.peers() == []
        async with await dial(operator, host, port) as client:
            await client.send(Ping(3))
            with trio.fail_after(WAIT_S):
                reply = await client.receive()
        assert reply == Pong(3)
        nursery.cancel_scope.cancel()


@pytest.mark.process
async def test_a_rounds_participants_are_linked_beyond_the_outbound_target_until_released(
    pki: Path, tmp_path: Path
) -> None:
    """A round's participants need links with each other (their small round messages, the
    lane-port announcement): the host keeps them, dialed beyond the outbound target, and
    opens their round lanes ahead; once no round names them, those links close after the
    grace (back to the outbound target)."""
    nodes: list[ValidatorNode] = []
    async with trio.open_nursery() as nursery:
        for index in range(5):
            options = ValidatorOptions(
                tmp_path / f"n{index}",
                ("127.0.0.1", 0),
                sentinel=not nodes,
                bootstrap=None if not nodes else nodes[0].address,
                peers=PeerTableConfig(  # no full mesh: 5 nodes, 1 link each
                    outbound_target=1, connections_max=8, full_mesh_max=0, release_grace_s=1.0
                ),
            )
            node = await ValidatorNode.open(
                identity(pki, f"n{index}"), options, on_ready=lambda line: None
            )
            await nursery.start(node.run)
            nodes.append(node)
        await until(lambda: all(node.joined() for node in nodes), "every node joins")
        last = nodes[-1]
        others = {node.me for node in nodes[:-1]}
        assert len(last.network.peers()) < len(others)  # one dialed, to its bootstrap node
        # As a ledger whose open round names these nodes does (the node re-reads its round
        # links at every commit and re-applies them after every input: a bare
        # network.keep() would be undone at once).
        round_peers = set(others)
        last._round_peers = lambda: set(round_peers)  # type: ignore[method-assign]
        last._round_links = set(round_peers)
        last._keep_links()
        await until(lambda: others <= set(last.network.peers()), "linked to every kept peer")
        await until(lambda: all(last.lanes.address(p) for p in others), "their lane ports")
        # Each kept peer's round lane is dialed ahead (at keep() where its lane port was
        # known, else when it arrives), before the round sends it anything.
        await until(lambda: last.lanes.opened_ahead == len(others), "their lanes opened ahead")
        receivers = [node.lanes.into for node in nodes[:-1]]
        await until(lambda: all(pool.live == 1 for pool in receivers), "each lane accepted")
        assert last.lanes.open_failed == 0
        assert last.network.pending_dropped == 0
        table = last.network.node.peers
        assert table.statistics().outbound > 1
        round_peers.clear()  # the round is over
        last._round_links = set()
        last._keep_links()
        await until(lambda: table.statistics().outbound == 1, "back to the outbound target")
        await until(lambda: not table.released, "every released link closed or ordinary")
        assert len(last.network.peers()) < len(others)
        nursery.cancel_scope.cancel()


@pytest.mark.process
async def test_round_lanes_ride_the_hosts_one_port_without_a_lane_port(
    pki: Path, tmp_path: Path
) -> None:
    """``lane_port=None`` (``--lane-port none``): a node announces its host's port for its
    round lanes, and the host hands a connection whose first byte is ``R`` to the lanes."""
    nodes: list[ValidatorNode] = []
    async with trio.open_nursery() as nursery:
        for index in range(2):
            options = ValidatorOptions(
                tmp_path / f"n{index}",
                ("127.0.0.1", 0),
                sentinel=not nodes,
                bootstrap=None if not nodes else nodes[0].address,
                lane_port=None,
            )
            node = await ValidatorNode.open(
                identity(pki, f"n{index}"), options, on_ready=lambda line: None
            )
            await nursery.start(node.run)
            nodes.append(node)
        first, second = nodes
        assert first.lanes.port == 0  # no listener of their own
        port = first.address[1]
        await until(lambda: second.lanes.address(first.me) == ("127.0.0.1", port), "its port")
        arrived: list[object] = []
        deliver = first.lanes.deliver

        def seen(peer: str, message: object, digest: bytes | None) -> None:
            arrived.append((peer, type(message)))
            deliver(peer, message, digest)  # type: ignore[arg-type]

        first.lanes.deliver = seen  # the node's own handler still runs
        assert second.lanes.send(first.me, RoundChunk("c", 1, 0, 0, b"x" * 4096))
        await until(lambda: bool(arrived), "the chunk, on a lane taken from the host's port")
        assert arrived == [(second.me, RoundChunk)]
        assert first.lanes.into.started == 1
        assert first.lanes.handshakes_failed == 0
        assert second.lanes.fallen_back == 0
        nursery.cancel_scope.cancel()
