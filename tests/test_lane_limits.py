"""Round lanes under a hostile member (issue 19, parts 1 and 3), over real sockets: a sender
that announces a 64 MiB frame and goes silent holds nobody else's turn and is cut off at its
frame deadline; handshakes have a deadline for the whole of them, and lanes are capped."""

from __future__ import annotations

import socket
import struct

import pytest
import trio

from swarmlearn.p2p.bulk_push import LANE_ROUND, LaneLimits, RoundLanes
from swarmlearn.p2p.certs import create_ca, issue_certificate
from swarmlearn.p2p.framing import encode_frame
from swarmlearn.p2p.identity import Identity, IdentityPaths, Role, load_identity
from swarmlearn.p2p.tls import client_context
from swarmlearn.p2p.wire import Message, payload_of
from swarmlearn.roles.sl.core import RoundChunk
from tests.test_round_lanes import Inbox

pytestmark = pytest.mark.process

WAIT_S = 20.0
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Identity]:
    pki = tmp_path_factory.mktemp("pki")
    ca = create_ca(pki)
    found = {}
    for name in ("a", "b", "c"):
        issue_certificate(ca, name, pki, hosts=["127.0.0.1"], roles=[Role.SN, Role.SL])
        paths = IdentityPaths(pki / f"{name}.pem", pki / f"{name}-key.pem", pki / "ca.pem")
        found[name] = load_identity(paths)
    return found


def silent_frame(me: Identity, port: int, announce: int) -> socket.socket:
    """A member's lane that announces ``announce`` bytes of a chunk and sends no more."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    raw.sendall(LANE_ROUND)
    sock = client_context(me).wrap_socket(raw)
    head = bytes(encode_frame(RoundChunk("c", 1, 0, 0, b""))[0])[4:]
    sock.sendall(struct.pack(">I", announce) + head)
    return sock


async def wait_until(condition: object) -> None:
    assert callable(condition)
    with trio.fail_after(WAIT_S):
        while not condition():  # noqa: ASYNC110 (lane threads count it)
            await trio.sleep(0.01)


async def test_a_silent_sender_holds_no_ones_turn_and_is_cut_off(
    members: dict[str, Identity],
) -> None:
    limits = LaneLimits(frame_timeout_s=1.0, frame_rate_min_bytes_s=1e12)
    a, b, c = members["a"], members["b"], members["c"]
    inbox = Inbox(expected=12)  # 48 MiB: more than the receive budget, while c holds 64 MiB

    def handle(peer: str, message: Message, digest: bytes | None) -> None:
        inbox.deliver(peer, message, digest)
        receiver.release(len(payload_of(message)), peer)  # the node handled it

    sender, receiver = RoundLanes(a, Inbox(0).deliver), RoundLanes(b, handle, limits=limits)
    chunk = b"w" * (4 * MIB)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(receiver.serve, "127.0.0.1")
        attacker = await trio.to_thread.run_sync(silent_frame, c, port, 64 * MIB - 1)
        sender.set_host(str(b.peer_id), "127.0.0.1")
        sender.set_port(str(b.peer_id), port)
        for index in range(12):
            assert sender.send(str(b.peer_id), RoundChunk("c", 1, 0, index, chunk))
        with trio.fail_after(WAIT_S):
            await inbox.full.wait()
        assert receiver.frame_timeouts == 0  # a's frames went by while c sat silent
        await wait_until(lambda: receiver.frame_timeouts == 1)
        assert receiver.inflight_peak_bytes < 16 * MIB  # c held a step, never 64 MiB
        attacker.close()
        sender.close()
        nursery.cancel_scope.cancel()


async def test_handshakes_have_one_deadline_and_lanes_a_cap(
    members: dict[str, Identity],
) -> None:
    limits = LaneLimits(threads_max=2, handshake_timeout_s=0.5)
    a, b = members["a"], members["b"]
    inbox = Inbox(expected=1)
    sender = RoundLanes(a, Inbox(0).deliver)
    receiver = RoundLanes(b, inbox.deliver, limits=limits)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(receiver.serve, "127.0.0.1")
        silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        silent[0].sendall(LANE_ROUND + b"\x16")  # a byte of a record header: the handshake
        await wait_until(lambda: receiver.refused == 1)  # the third: over the cap
        await wait_until(lambda: receiver.handshakes_failed == 2)  # the first two, at 0.5 s
        sender.set_host(str(b.peer_id), "127.0.0.1")
        sender.set_port(str(b.peer_id), port)
        assert sender.send(str(b.peer_id), RoundChunk("c", 1, 0, 0, b"x" * 64))
        with trio.fail_after(WAIT_S):
            await inbox.full.wait()  # the slots came back
        for sock in silent:
            sock.close()
        sender.close()
        nursery.cancel_scope.cancel()
