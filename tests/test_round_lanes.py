"""Round lanes (p2p/bulk_push.py) over real mutual-TLS sockets on loopback: frames arrive in
order with their payload's digest, and only swarm nodes (SN, SL, SWOP certificates) with the
expected identity get a lane (a round's, or a blob fetch's: the same lane code)."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable
from functools import partial

import pytest
import trio

from swarmlearn.digest import content_digest
from swarmlearn.p2p.bulk import BlobServer, dial_tls, fetch_manifest
from swarmlearn.p2p.bulk_push import LANE_ROUND, LaneLimits, RoundLanes
from swarmlearn.p2p.certs import create_ca, issue_certificate
from swarmlearn.p2p.framing import encode_frame
from swarmlearn.p2p.identity import Identity, IdentityPaths, Role, load_identity
from swarmlearn.p2p.lane import LANE_ERRORS
from swarmlearn.p2p.tls import client_context
from swarmlearn.p2p.transfer import BlobManifest
from swarmlearn.p2p.wire import Message
from swarmlearn.roles.sl.core import MergedPiece, RoundChunk, RoundManifest

pytestmark = pytest.mark.process

WAIT_S = 20.0


@pytest.fixture(scope="module")
def identities(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Identity]:
    pki = tmp_path_factory.mktemp("pki")
    ca = create_ca(pki)
    roles = {"a": [Role.SN, Role.SL], "b": [Role.SN, Role.SL], "c": [Role.SN], "x": [Role.SWCI]}
    found = {}
    for name, granted in roles.items():
        issue_certificate(ca, name, pki, hosts=["127.0.0.1"], roles=granted)
        found[name] = load_identity(
            IdentityPaths(pki / f"{name}.pem", pki / f"{name}-key.pem", pki / "ca.pem")
        )
    return found


class Inbox:
    def __init__(self, expected: int) -> None:
        self.got: list[tuple[str, Message, bytes | None]] = []
        self.expected = expected
        self.full = trio.Event()

    def deliver(self, peer: str, message: Message, digest: bytes | None) -> None:
        self.got.append((peer, message, digest))
        if len(self.got) >= self.expected:
            self.full.set()


async def test_frames_arrive_in_order_with_their_digests(identities: dict[str, Identity]) -> None:
    a, b = identities["a"], identities["b"]
    inbox = Inbox(expected=4)
    sender, receiver = RoundLanes(a, Inbox(0).deliver), RoundLanes(b, inbox.deliver)
    chunk = bytes(range(256)) * (16 * 1024)  # 4 MiB
    sent: list[Message] = [
        RoundManifest("c", 1, 0, (content_digest(chunk),)),
        RoundChunk("c", 1, 0, 0, chunk),
        RoundChunk("c", 1, 0, 1, chunk[:1000]),
        MergedPiece("c", 1, 0, 8, memoryview(chunk)[8:4096]),
    ]
    async with trio.open_nursery() as nursery:
        port = await nursery.start(receiver.serve, "127.0.0.1")
        assert not sender.send(str(b.peer_id), sent[0])  # no address yet: not taken
        sender.set_host(str(b.peer_id), "127.0.0.1")
        sender.set_port(str(b.peer_id), port)
        for message in sent:
            assert sender.send(str(b.peer_id), message)
        with trio.fail_after(WAIT_S):
            await inbox.full.wait()
        sender.close()
        nursery.cancel_scope.cancel()
    assert [peer for peer, _, _ in inbox.got] == [str(a.peer_id)] * 4
    assert [type(m) for _, m, _ in inbox.got] == [type(m) for m in sent]
    assert inbox.got[0][2] is None  # no payload, no digest
    for (_, message, digest), original in zip(inbox.got[1:], sent[1:], strict=True):
        assert isinstance(message, RoundChunk | MergedPiece)
        assert isinstance(original, RoundChunk | MergedPiece)
        assert bytes(message.data) == bytes(original.data)
        assert digest == content_digest(original.data)
    assert sender.dropped == 0


async def test_a_lane_that_reaches_another_node_drops_the_message(
    identities: dict[str, Identity],
) -> None:
    a, b, c = identities["a"], identities["b"], identities["c"]
    inbox = Inbox(expected=1)
    sender, impostor = RoundLanes(a, Inbox(0).deliver), RoundLanes(c, inbox.deliver)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(impostor.serve, "127.0.0.1")
        sender.set_host(str(b.peer_id), "127.0.0.1")
        sender.set_port(str(b.peer_id), port)  # b's lane, but c answers there
        assert sender.send(str(b.peer_id), RoundChunk("c", 1, 0, 0, b"x" * 64))
        with trio.fail_after(WAIT_S):
            while sender.dropped == 0:  # noqa: ASYNC110 (a lane thread counts it)
                await trio.sleep(0.01)
        sender.close()
        nursery.cancel_scope.cancel()
    assert inbox.got == []


async def test_a_certificate_with_no_node_role_gets_no_lane(
    identities: dict[str, Identity],
) -> None:
    b, outsider = identities["b"], identities["x"]
    inbox = Inbox(expected=1)
    receiver = RoundLanes(b, inbox.deliver)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(receiver.serve, "127.0.0.1")

        def try_lane() -> bytes:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as raw,
                client_context(outsider).wrap_socket(_lane_byte(raw)) as tls,
            ):
                try:
                    for part in encode_frame(RoundChunk("c", 1, 0, 0, b"x" * 64)):
                        tls.sendall(part)  # a well-formed frame: refused for who sent it
                    return tls.recv(1)  # the lane is closed on us: b"" (or a reset)
                except (ConnectionError, ssl.SSLError):
                    return b""

        assert await trio.to_thread.run_sync(try_lane) == b""
        receiver.close()
        nursery.cancel_scope.cancel()
    assert inbox.got == []


async def test_a_lane_that_cannot_be_dialed_hands_its_messages_back(
    identities: dict[str, Identity],
) -> None:
    a, b = identities["a"], identities["b"]
    back: list[tuple[str, Message]] = []
    both_back = trio.Event()

    def fallback(peer: str, message: Message) -> None:
        back.append((peer, message))
        if len(back) == 2:
            both_back.set()

    sender = RoundLanes(a, Inbox(0).deliver, fallback)
    with socket.socket() as closed:  # a port nobody listens on: the firewall case, refused
        closed.bind(("127.0.0.1", 0))
        dead_port = closed.getsockname()[1]
    sent = [RoundChunk("c", 1, 0, index, b"y" * 64) for index in range(2)]
    async with trio.open_nursery() as nursery:
        await nursery.start(sender.serve, "127.0.0.1")
        sender.set_host(str(b.peer_id), "127.0.0.1")
        sender.set_port(str(b.peer_id), dead_port)
        for message in sent:
            assert sender.send(str(b.peer_id), message)
        with trio.fail_after(WAIT_S):
            await both_back.wait()
        assert not sender.send(str(b.peer_id), sent[0])  # the lane is down: the caller sends
        sender.close()
        nursery.cancel_scope.cancel()
    assert back == [(str(b.peer_id), message) for message in sent]
    assert (sender.fallen_back, sender.dropped) == (2, 0)


async def wait_until(condition: Callable[[], bool]) -> None:
    with trio.fail_after(WAIT_S):
        while not condition():  # noqa: ASYNC110 (lane threads count it)
            await trio.sleep(0.01)


async def test_an_idle_lane_closes_at_both_ends_and_leaves_no_thread(
    identities: dict[str, Identity],
) -> None:
    a, b = identities["a"], identities["b"]
    inbox = Inbox(expected=2)
    sender = RoundLanes(a, Inbox(0).deliver, limits=LaneLimits(sender_idle_s=0.2))
    receiver = RoundLanes(b, inbox.deliver)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(receiver.serve, "127.0.0.1")
        sender.set_host(str(b.peer_id), "127.0.0.1")
        sender.set_port(str(b.peer_id), port)
        assert sender.send(str(b.peer_id), RoundChunk("c", 1, 0, 0, b"x" * 64))
        # Nothing more to send: the sender closes its lane, the receiver ends its side.
        await wait_until(lambda: sender.idle_closed_out == 1 and receiver.peer_closed == 1)
        await wait_until(lambda: sender.out.live == 0 and receiver.into.live == 0)
        assert receiver.idle_closed == 0  # not cut by the receiver's deadline: closed
        assert sender.send(str(b.peer_id), RoundChunk("c", 1, 0, 1, b"y" * 64))  # redials
        with trio.fail_after(WAIT_S):
            await inbox.full.wait()
        sender.close()
        nursery.cancel_scope.cancel()
    assert await trio.to_thread.run_sync(sender.join, WAIT_S) == 0
    for lanes in (sender, receiver):
        for pool in lanes.thread_statistics().values():
            assert (pool["threads_live"], pool["threads_failed"], pool["threads_leaked"]) == (
                0,
                0,
                0,
            )
    assert sender.out.started == 2  # a thread per lane opened, each ended
    assert [m.index for _, m, _ in inbox.got if isinstance(m, RoundChunk)] == [0, 1]


async def test_a_lane_opened_ahead_carries_the_first_chunk_and_a_failed_one_is_no_fault(
    identities: dict[str, Identity],
) -> None:
    """``open`` dials a participant's lane before its first chunk (a round's lanes were all
    dialed when its exchange started, beside the ledger); the chunk then goes on that lane,
    no second one. A peer whose lane cannot be dialed ahead is not marked down: its chunks
    still try a lane of their own first."""
    a, b = identities["a"], identities["b"]
    inbox = Inbox(expected=1)
    sender, receiver = RoundLanes(a, Inbox(0).deliver), RoundLanes(b, inbox.deliver)
    unreachable = str(identities["c"].peer_id)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(receiver.serve, "127.0.0.1")
        sender.open([str(b.peer_id)])  # no address yet: left for later
        assert sender.opened_ahead == 0
        sender.set_host(str(b.peer_id), "127.0.0.1")
        sender.set_port(str(b.peer_id), port)
        sender.set_host(unreachable, "127.0.0.1")
        sender.set_port(unreachable, _closed_port())
        sender.open([str(b.peer_id), unreachable])
        sender.open([str(b.peer_id)])  # a lane already: nothing more
        await wait_until(lambda: receiver.into.live == 1 and sender.open_failed == 1)
        assert sender.opened_ahead == 2
        assert not sender.is_down(unreachable)
        assert sender.send(str(b.peer_id), RoundChunk("c", 1, 0, 0, b"x" * 64))
        with trio.fail_after(WAIT_S):
            await inbox.full.wait()
        assert receiver.into.started == 1  # the chunk came on the lane opened ahead
        sender.close()
        nursery.cancel_scope.cancel()
    assert await trio.to_thread.run_sync(sender.join, WAIT_S) == 0


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_certificate_with_no_node_role_gets_no_blob_lane_either(
    identities: dict[str, Identity],
) -> None:
    server = BlobServer(identities["b"], timeout_s=WAIT_S)
    manifest = BlobManifest.build(b"z" * 1000, 256)
    server.add(manifest, b"z" * 1000)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        serving = threading.Thread(target=server.serve_forever, args=(listener,))
        serving.start()
        try:
            with pytest.raises(LANE_ERRORS):  # the lane is closed on the outsider
                await trio.to_thread.run_sync(
                    fetch_manifest,
                    lambda: dial_tls(identities["x"], "127.0.0.1", port),
                    manifest.root,
                )
            await wait_until(lambda: server.handshakes_failed == 1)  # counted as it closes
            node = partial(dial_tls, identities["a"], "127.0.0.1", port)
            assert await trio.to_thread.run_sync(fetch_manifest, node, manifest.root) == manifest
        finally:
            server.stop()
            serving.join(WAIT_S)
    assert server.join(WAIT_S) == 0


async def test_close_wakes_a_lane_still_in_its_handshake(identities: dict[str, Identity]) -> None:
    a, b = identities["a"], identities["b"]
    sender = RoundLanes(a, Inbox(0).deliver, limits=LaneLimits(handshake_timeout_s=WAIT_S))
    with socket.create_server(("127.0.0.1", 0)) as mute:  # accepts, never answers a hello
        mute.settimeout(WAIT_S)
        sender.set_host(str(b.peer_id), "127.0.0.1")
        sender.set_port(str(b.peer_id), mute.getsockname()[1])
        assert sender.send(str(b.peer_id), RoundChunk("c", 1, 0, 0, b"x" * 64))
        accepted, _ = await trio.to_thread.run_sync(mute.accept)  # the dial reached it
        with accepted:
            sender.close()
            started = trio.current_time()
            assert await trio.to_thread.run_sync(sender.join, WAIT_S) == 0
            assert trio.current_time() - started < WAIT_S / 2  # not the handshake deadline


async def test_sender_threads_are_bounded_and_the_rest_take_the_message_connection(
    identities: dict[str, Identity],
) -> None:
    a, b, c = identities["a"], identities["b"], identities["c"]
    receiver = RoundLanes(b, Inbox(1).deliver)
    sender = RoundLanes(a, Inbox(0).deliver, limits=LaneLimits(senders_max=1))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(receiver.serve, "127.0.0.1")
        for peer in (b, c):
            sender.set_host(str(peer.peer_id), "127.0.0.1")
            sender.set_port(str(peer.peer_id), port)
        assert sender.send(str(b.peer_id), RoundChunk("c", 1, 0, 0, b"x" * 64))
        assert not sender.send(str(c.peer_id), RoundChunk("c", 1, 0, 0, b"x" * 64))
        assert sender.out.refused == 1  # the caller sends that one on the message connection
        sender.close()
        nursery.cancel_scope.cancel()
    assert await trio.to_thread.run_sync(sender.join, WAIT_S) == 0


def _lane_byte(raw: socket.socket) -> socket.socket:
    raw.sendall(LANE_ROUND)  # a round lane's first byte, on either port
    return raw
