"""Forged transactions: which refusals prove a forgery (a table against the real swarm app),
the consensus core delivering them (and never relaying a transaction), the police's
threshold, window and doubling bans, and a real node over TLS sockets: a rogue peer sending
forged transactions on its link is disconnected and its reconnects refused (a peer-table
ban), an honest node is not."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import trio
from cryptography.hazmat.primitives.serialization import Encoding
from prometheus_client.parser import text_string_to_metric_families

from swarmlearn.consensus.ledger.app import DEFAULT_CONTRACT, SwarmApp, is_forgery
from swarmlearn.consensus.ledger.txs import CreateContract, Heartbeat, Join, PerfData, SignedTx
from swarmlearn.consensus.tendermint.core import ConsensusCore, ForgedTx
from swarmlearn.consensus.tendermint.crypto import KeySigner, KeyVerifier
from swarmlearn.consensus.tendermint.events import Genesis, SubmitTx, TxRefused
from swarmlearn.consensus.tendermint.types import Block, BlockHeader, Tx
from swarmlearn.p2p.certs import create_ca, issue_certificate
from swarmlearn.p2p.identity import Identity, Role
from swarmlearn.p2p.messages import Goodbye, Ping, Pong
from swarmlearn.p2p.mux import MuxConfig
from swarmlearn.p2p.service_blobs import LANE_MESSAGES
from swarmlearn.p2p.service_link import Link
from swarmlearn.p2p.tls import client_context
from swarmlearn.p2p.transport import Connection, connect_stream, dial
from swarmlearn.p2p.wire import Message, encode_header
from swarmlearn.roles.node.node import (
    ValidatorNode,
    ValidatorOptions,
    ca_certificate,
    ca_fingerprint,
    own_validator,
)
from swarmlearn.roles.node.policing import Police, PolicingConfig
from swarmlearn.sansio import Broadcast, Deliver, Receive, Request, Send, Start
from tests.api_helpers import identity, sentinel_api

CHAIN = "police-test"
WAIT_S = 30.0
POLL_S = 0.05
ROLES = {
    "sn": [Role.SN, Role.SL],
    "op": [Role.SWCI],
    "member": [Role.SL],
    "rogue": [Role.SL],
    "newcomer": [Role.SL],
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("police")
    ca = create_ca(root / "pki")
    for name, roles in ROLES.items():
        issue_certificate(ca, name, root / "pki", hosts=["127.0.0.1"], roles=roles)
    other = create_ca(root / "other", name="another swarm")
    issue_certificate(other, "stranger", root / "other", hosts=["127.0.0.1"], roles=[Role.SL])
    return root


def person(pki: Path, name: str) -> Identity:
    if name == "stranger":
        return identity(pki / "other", name)
    return identity(pki / "pki", name)


def der(who: Identity) -> bytes:
    return who.certificate.public_bytes(Encoding.DER)


def signed(who: Identity, body: Message, *, chain: str = CHAIN, sender: str = "") -> bytes:
    """``body`` signed by ``who`` for ``chain``, in the name of ``sender`` (default: itself)."""
    envelope = SignedTx(sender or str(who.peer_id), encode_header(body), b"")
    signature = who.sign(envelope.sign_bytes(chain))
    return encode_header(SignedTx(envelope.sender, envelope.body, signature))


def forgeries(rogue: Identity, victim: Identity, chain: str, count: int) -> list[bytes]:
    """``count`` forged transactions, of every kind in turn, each distinct."""
    kinds: list[Callable[[int], bytes]] = [
        lambda i: b"\xfe\xed garbage %d" % i,
        lambda i: encode_header(Heartbeat(at_ms=i)),  # not signed at all
        lambda i: signed(rogue, Join(f"127.0.0.1:{i}", der(rogue)), chain="another-chain"),
        lambda i: signed(rogue, Join(f"127.0.0.1:{i}", der(victim)), chain=chain),
        lambda i: signed(
            rogue, Join(f"127.0.0.1:{i}", der(victim)), chain=chain, sender=str(victim.peer_id)
        ),
    ]
    return [kinds[i % len(kinds)](i) for i in range(count)]


# ------------------------------------------------------------ which refusals are forgeries


def test_only_state_independent_refusals_are_forgeries(pki: Path) -> None:
    sn, sl, op = person(pki, "sn"), person(pki, "member"), person(pki, "op")
    stranger = person(pki, "stranger")
    now_ms = int(time.time() * 1000)  # the certificates are valid from now - 5 min
    app = SwarmApp(CHAIN, ca_certificate(sn), now_ms)
    header = BlockHeader(CHAIN, 1, now_ms, "v", b"", b"", b"", b"")
    member = signed(sl, Join("127.0.0.1:1", der(sl)))
    app.execute_block(Block(header, (member,)))
    sn_id, sl_id = str(sn.peer_id), str(sl.peer_id)
    table: list[tuple[str, bytes, str, bool]] = [
        ("garbage", b"\xfe\xed garbage", "undecodable transaction", True),
        ("unsigned body", encode_header(Heartbeat()), "not a signed swarm transaction", True),
        ("another chain", signed(sl, Heartbeat(), chain="x"), "bad signature", True),
        ("in a member's name", signed(op, Heartbeat(), sender=sl_id), "bad signature", True),
        ("join, another's cert", signed(op, Join("h:1", der(sn))), "join as itself", True),
        ("join as another", signed(op, Join("h", der(sn)), sender=sn_id), "bad signature", True),
        ("another swarm", signed(stranger, Join("h:1", der(stranger))), "this swarm's", True),
        ("not a member yet", signed(op, Heartbeat()), "is not a member: join first", False),
        ("role not granted", signed(sl, CreateContract("c")), "needs the swci role", False),
        ("a member's heartbeat", signed(sl, Heartbeat(at_ms=5)), "", False),
    ]
    for name, tx, expected, forged in table:
        reason = app.check_tx(tx)
        assert expected in reason if expected else reason == "", (name, reason)
        assert is_forgery(reason) is forged, (name, reason)
    # A certificate not valid at the block's time: the state's (the time's), not a forgery.
    reason = SwarmApp(CHAIN, ca_certificate(sn), 0).check_tx(signed(sn, Join("h", der(sn))))
    assert "not valid at this block's time" in reason
    assert not is_forgery(reason)


# ------------------------------------------------------------ the consensus core


def core_of(sn: Identity, seat: Identity, *, police: bool) -> ConsensusCore:
    """``sn``'s core, ``seat`` the only validator (so that nothing is committed here)."""
    now_ms = int(time.time() * 1000)
    validators = (own_validator(seat),)
    genesis = Genesis(CHAIN, now_ms, validators, ca_fingerprint(sn), ca_certificate(sn))
    app = SwarmApp(CHAIN, genesis.ca_certificate, now_ms, frozenset({str(seat.peer_id)}))
    core = ConsensusCore(
        genesis,
        KeySigner(sn),
        KeyVerifier(),
        app,
        random.Random(7),
        ["peer-a", "peer-b"],
        is_forgery=is_forgery if police else None,
    )
    core.handle(Start(), 0.0)
    return core


def test_the_core_delivers_forgeries_and_relays_nothing(pki: Path) -> None:
    sn, rogue, sl = person(pki, "sn"), person(pki, "rogue"), person(pki, "member")
    core = core_of(sn, person(pki, "op"), police=True)
    for tx in forgeries(rogue, sl, CHAIN, 5):
        effects = core.handle(Receive("peer-a", Tx(tx)), 1.0)
        assert len(effects) == 1, effects
        assert isinstance(effects[0], Deliver)
        assert isinstance(effects[0].value, ForgedTx)
        assert effects[0].value.sender == "peer-a"
        assert is_forgery(effects[0].value.reason)
    # Refused for the state (not a member yet): nothing to police.
    assert core.handle(Receive("peer-a", Tx(signed(sl, Heartbeat()))), 1.0) == []
    # A valid transaction from a peer is taken, and never relayed to the other peers.
    taken = core.handle(Receive("peer-a", Tx(signed(sl, Join("127.0.0.1:2", der(sl))))), 1.0)
    assert not [e for e in taken if isinstance(e, Send | Broadcast) and isinstance(e.message, Tx)]
    assert len(core.mempool) == 1
    # Its own submissions are checked before they are broadcast: a forgery never leaves.
    own = core.handle(Request(SubmitTx(signed(sn, Heartbeat(), chain="x"))), 1.0)
    assert [type(e.value) for e in own if isinstance(e, Deliver)] == [TxRefused]
    assert not [e for e in own if isinstance(e, Broadcast)]
    # Without the hook (the simulators), a forgery is just dropped.
    quiet = core_of(sn, person(pki, "op"), police=False)
    assert quiet.handle(Receive("peer-a", Tx(b"\xfe\xed garbage")), 1.0) == []


# ------------------------------------------------------------ the police


def test_threshold_window_and_doubling_bans() -> None:
    police = Police(PolicingConfig(forged_max=3, window_s=10.0, ban_s=60.0, ban_max_s=200.0))
    # (time, peer, ban duration expected from this forgery; 0: none)
    table = [
        (0.0, "a", 0),
        (1.0, "a", 0),
        (12.0, "a", 0),  # the first two left the window: 1 in it now
        (13.0, "b", 0),  # another peer's count is its own
        (14.0, "a", 0),
        (15.0, "a", 60),  # 3 within 10 s: banned for 60 s
        (16.0, "a", 0),  # banned already: counted, no new ban
        (80.0, "a", 0),  # the ban is over; the window starts afresh
        (81.0, "a", 0),
        (82.0, "a", 120),  # the second ban doubles
        (300.0, "a", 0),
        (301.0, "a", 0),
        (302.0, "a", 200),  # capped at ban_max_s
    ]
    for now, peer, expected_s in table:
        ban = police.forged(peer, "bad signature", now)
        assert (ban.duration_s if ban else 0) == expected_s, (now, peer)
        if ban is not None:
            assert ban.until == now + expected_s
            assert "3 forged transactions within 10 s" in ban.reason
            assert ban.reason.endswith("(last: bad signature)")
    assert police.forged_total == len(table)
    assert police.bans_total == 3
    assert police.banned(303.0) == ["a"]
    assert police.banned_s("a", 303.0) == 199.0
    assert police.refuse("a", 303.0)
    assert not police.refuse("b", 303.0)
    assert not police.refuse("a", 502.0)
    snapshot = police.snapshot(303.0)
    assert snapshot["refused_connections"] == 1
    assert snapshot["banned"] == ["a"]
    assert snapshot["peers"] == {
        "a": {"forged": 12, "last_reason": "bad signature", "bans": 3, "banned_for_s": 199.0},
        "b": {"forged": 1, "last_reason": "bad signature", "bans": 0, "banned_for_s": 0.0},
    }


# ------------------------------------------------------------ a real node over TLS


async def until(predicate: object, what: str) -> None:
    """Poll the in-process node's state (it moves on its own tasks) until ``predicate``."""
    assert callable(predicate)
    with trio.move_on_after(WAIT_S):
        for _ in range(int(WAIT_S / POLL_S)):
            if predicate():
                return
            await trio.sleep(POLL_S)
    raise AssertionError(f"not within {WAIT_S} s: {what}")


async def link_connection(who: Identity, host: str, port: int) -> Connection:
    """A peer's connection to the node's host: the link byte, then mutual TLS."""
    tcp = await trio.open_tcp_stream(host, port)
    await tcp.send_all(LANE_MESSAGES)
    return await connect_stream(who, tcp)


async def run_link(
    who: Identity, host: str, port: int, seen: list[Message], *, task_status: trio.TaskStatus[Link]
) -> None:
    """A peer's link to the node (a mux over the connection), until the node closes it."""
    connection = await link_connection(who, host, port)
    link = Link(
        1,
        str(connection.peer_id),
        connection,
        outbound=True,
        mux_config=MuxConfig(),
        queue_bytes_max=1 << 24,
        write_budget_bytes=1 << 18,
        frame_bytes_max=1 << 24,
    )
    task_status.started(link)
    await link.run(seen.append)


async def drained(connection: Connection) -> list[Message]:
    """What the node sends until it closes the connection (within the deadline)."""
    seen: list[Message] = []
    with trio.fail_after(WAIT_S):
        try:
            async for message in connection:
                seen.append(message)
        except trio.BrokenResourceError:
            pass
    return seen


@pytest.mark.process
async def test_a_rogue_peer_is_cut_off_and_honest_ones_are_not(pki: Path, tmp_path: Path) -> None:
    root = pki / "pki"
    async with sentinel_api(root, tmp_path / "sn") as (node, url):
        host, port = node.address
        rogue, newcomer = person(pki, "rogue"), person(pki, "newcomer")
        # An honest node joins, and gossips transactions that the sentinel takes.
        member = await ValidatorNode.open(
            person(pki, "member"),
            ValidatorOptions(tmp_path / "member", ("127.0.0.1", 0), bootstrap=(host, port)),
            on_ready=lambda line: None,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(member.run)
            await until(member.joined, "the member joins")
            await until(lambda: node.me in member.network.peers(), "the member connects")
            perf = [PerfData(DEFAULT_CONTRACT, n, 0.5, 0.9, n, 30) for n in range(1, 26)]
            txs = [signed(member.identity, body, chain=node.core.chain_id) for body in perf]
            for tx in txs[:-1]:
                await member.submit(tx)
            assert (await member.submit(txs[-1], WAIT_S)).accepted
            await until(lambda: all(node.app.outcome(tx) == "ok" for tx in txs), "all committed")

            # A node not in the registry yet: its transactions are refused, not policed.
            chain = node.core.chain_id
            heard: list[Message] = []
            honest = await nursery.start(run_link, newcomer, host, port, heard)
            for n in range(25):
                honest.queue(Tx(signed(newcomer, Heartbeat(at_ms=n), chain=chain)), 0)
            newcomer_id = str(newcomer.peer_id)
            await until(lambda: newcomer_id in node.network.peers(), "the newcomer connects")

            # The rogue: a valid certificate, 20 forged transactions on its link, cut off.
            with trio.fail_after(WAIT_S):
                async with trio.open_nursery() as rogue_tasks:
                    link = await rogue_tasks.start(run_link, rogue, host, port, [])
                    for tx in forgeries(rogue, member.identity, node.core.chain_id, 20):
                        link.queue(Tx(tx), 0)
            ban = node.network.police.snapshot(trio.current_time())
            assert ban["banned"] == [str(rogue.peer_id)]
            assert str(rogue.peer_id) not in node.network.peers()
            # Reconnecting is refused, with the reason.
            async with await link_connection(rogue, host, port) as again:
                said = await drained(again)
            reasons = [m.reason for m in said if isinstance(m, Goodbye)]
            assert len(reasons) == 1
            assert re.fullmatch(r"banned for (59|60) s: forged transactions", reasons[0])
            # The honest ones are still connected, and a one-shot client is answered.
            async with await dial(newcomer, host, port) as client:
                await client.send(Ping(8))
                with trio.fail_after(WAIT_S):
                    while not isinstance(reply := await client.receive(), Pong):
                        pass
            assert reply.nonce == 8
            assert newcomer_id in node.network.peers()
            assert member.me in node.network.peers()
            nursery.cancel_scope.cancel()

        operator = client_context(identity(root, "op"))
        async with httpx.AsyncClient(verify=operator, timeout=30) as http:
            status = (await http.get(f"{url}/v1/status")).json()["policing"]
            metrics = (await http.get(f"{url}/metrics")).text
    assert status["banned"] == [str(rogue.peer_id)]
    assert status["bans"] == 1
    assert status["refused_connections"] == 1
    assert status["forged_transactions"] == 20
    assert list(status["peers"]) == [str(rogue.peer_id)]  # nobody honest was counted
    assert status["peers"][str(rogue.peer_id)]["forged"] == 20
    values = {
        sample.name: sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
    }
    assert values["swarm_forged_transactions_total"] == 20
    assert values["swarm_peer_bans_total"] == 1
    assert values["swarm_peers_banned"] == 1
