"""Mutual-TLS transport: one conformance suite over memory streams and over loopback sockets,
then the rejection cases against a real listener."""

from __future__ import annotations

import ssl
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from swarmlearn.errors import LocalProtocolError, RemoteProtocolError
from swarmlearn.p2p.framing import encode_frame
from swarmlearn.p2p.identity import Identity, Role
from swarmlearn.p2p.messages import Chunk, Goodbye, Ping, Pong
from swarmlearn.p2p.tls import client_context
from swarmlearn.p2p.transport import (
    Connection,
    Listener,
    TransportConfig,
    accept_stream,
    connect_stream,
    dial,
)
from tests.conftest import Pki

SMALL = TransportConfig(frame_bytes_max=64 * 1024, handshake_timeout_s=5)


async def stream_pair(kind: str) -> tuple[trio.abc.Stream, trio.abc.Stream]:
    if kind == "memory":
        return trio.testing.memory_stream_pair()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listeners[0]:
        port = listeners[0].socket.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server = await listeners[0].accept()
    return client, server


@asynccontextmanager
async def connection_pair(
    kind: str, client: Identity, server: Identity, config: TransportConfig = SMALL
) -> AsyncIterator[tuple[Connection, Connection]]:
    client_stream, server_stream = await stream_pair(kind)
    accepted: list[Connection] = []

    async def accept() -> None:
        accepted.append(await accept_stream(server, server_stream, config=config))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        dialed = await connect_stream(client, client_stream, config=config)
    async with dialed, accepted[0]:
        yield dialed, accepted[0]


KINDS = ["memory", pytest.param("loopback", marks=pytest.mark.process)]


# ---------------------------------------------------------------- conformance suite


@pytest.mark.parametrize("kind", KINDS)
async def test_each_side_knows_the_other_from_its_certificate(kind: str, pki: Pki) -> None:
    async with connection_pair(kind, pki.sl, pki.sn) as (client, server):
        assert client.peer_id == pki.sn.peer_id
        assert client.peer.roles == {Role.SN, Role.SL}
        assert server.peer_id == pki.sl.peer_id
        assert server.peer.name == "sl-1"


@pytest.mark.parametrize("kind", KINDS)
async def test_messages_flow_both_ways_in_order(kind: str, pki: Pki) -> None:
    async with connection_pair(kind, pki.sl, pki.sn) as (client, server):
        for nonce in range(20):
            await client.send(Ping(nonce))
        for nonce in range(20):
            assert await server.receive() == Ping(nonce)
            await server.send(Pong(nonce))
        assert [await client.receive() for _ in range(20)] == [Pong(n) for n in range(20)]
        stats = client.statistics()
        assert (stats.frames_sent, stats.frames_received) == (20, 20)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_bulk_chunk_arrives_whole_while_the_other_side_sends_too(
    kind: str, pki: Pki
) -> None:
    payload = bytes(range(256)) * 200  # 51,200 bytes: many TLS records
    async with connection_pair(kind, pki.p256, pki.sn) as (client, server):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send, Chunk(b"r" * 32, 1, payload))
            nursery.start_soon(server.send, Chunk(b"s" * 32, 2, payload[::-1]))
            from_client = await server.receive()
            from_server = await client.receive()
        assert from_client == Chunk(b"r" * 32, 1, payload)
        assert from_server == Chunk(b"s" * 32, 2, payload[::-1])
        assert isinstance(from_client, Chunk)
        assert isinstance(from_client.data, memoryview)


@pytest.mark.parametrize("kind", KINDS)
async def test_concurrent_senders_never_interleave_frames(kind: str, pki: Pki) -> None:
    async with connection_pair(kind, pki.sl, pki.sn) as (client, server):
        async with trio.open_nursery() as nursery:
            for sender in range(4):
                nursery.start_soon(
                    client.send, Chunk(bytes([sender]), sender, bytes([sender]) * 30000)
                )
        received = [await server.receive() for _ in range(4)]
        assert sorted(msg.index for msg in received if isinstance(msg, Chunk)) == [0, 1, 2, 3]
        for msg in received:
            assert isinstance(msg, Chunk)
            assert bytes(msg.data) == bytes([msg.index]) * 30000


@pytest.mark.parametrize("kind", KINDS)
async def test_a_clean_close_ends_iteration(kind: str, pki: Pki) -> None:
    async with connection_pair(kind, pki.sl, pki.sn) as (client, server):
        await client.send(Goodbye("done"))
        await client.aclose()
        assert [msg async for msg in server] == [Goodbye("done")]
        with pytest.raises(trio.EndOfChannel):
            await server.receive()


@pytest.mark.parametrize("kind", KINDS)
async def test_an_invalid_message_closes_the_connection_and_is_counted(kind: str, pki: Pki) -> None:
    async with connection_pair(kind, pki.sl, pki.sn) as (client, server):
        bogus = struct.pack(">II", 4 + 3, 3) + b"\x82\x01\x61"  # a truncated CBOR header
        await client._stream.send_all(bogus)
        await client.send(Ping(1))
        with pytest.raises(RemoteProtocolError, match="undecodable"):
            await server.receive()
        assert server.statistics().messages_dropped == 1
        assert server.statistics().protocol_errors == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_a_frame_over_the_limit_closes_the_connection(kind: str, pki: Pki) -> None:
    async with connection_pair(kind, pki.sl, pki.sn) as (client, server):
        await client._stream.send_all(struct.pack(">I", SMALL.frame_bytes_max + 1))
        with pytest.raises(RemoteProtocolError, match="frame length"):
            await server.receive()
        assert server.statistics().protocol_errors == 1
        with pytest.raises((trio.BrokenResourceError, trio.EndOfChannel)):
            await client.receive()


@pytest.mark.parametrize("kind", KINDS)
async def test_sending_over_the_limit_is_our_mistake(kind: str, pki: Pki) -> None:
    async with connection_pair(kind, pki.sl, pki.sn) as (client, _server):
        with pytest.raises(LocalProtocolError, match="exceeds"):
            await client.send(Chunk(b"r", 0, bytes(SMALL.frame_bytes_max)))


@pytest.mark.parametrize("kind", KINDS)
async def test_the_stream_ending_mid_frame_is_a_protocol_error(kind: str, pki: Pki) -> None:
    async with connection_pair(kind, pki.sl, pki.sn) as (client, server):
        ping_head = bytes(encode_frame(Ping(1))[0])[4:]  # a message header, then nothing more
        await client._stream.send_all(struct.pack(">I", 100) + ping_head)
        await client._stream.aclose()
        with pytest.raises(RemoteProtocolError, match="middle of a frame"):
            await server.receive()


async def test_a_dialer_can_insist_on_a_peer_id(pki: Pki) -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_accept_quietly, pki.sn, server_stream)
        with pytest.raises(RemoteProtocolError, match=f"expected peer {pki.sl.peer_id}"):
            await connect_stream(pki.sl, client_stream, config=SMALL, expected_peer=pki.sl.peer_id)


async def _accept_quietly(identity: Identity, stream: trio.abc.Stream) -> None:
    try:
        async with await accept_stream(identity, stream, config=SMALL) as connection:
            await connection.receive()
    except (RemoteProtocolError, trio.BrokenResourceError, trio.EndOfChannel):
        pass


async def test_a_silent_peer_times_out_the_handshake(
    pki: Pki, autojump_clock: trio.abc.Clock
) -> None:
    _client_stream, server_stream = trio.testing.memory_stream_pair()
    with pytest.raises(RemoteProtocolError, match="TLS handshake timed out"):
        await accept_stream(pki.sn, server_stream, config=SMALL)


# ---------------------------------------------------------------- a listener refuses and goes on


@asynccontextmanager
async def running_listener(
    identity: Identity, config: TransportConfig = SMALL
) -> AsyncIterator[tuple[Listener, int]]:
    listener = Listener(identity, config)

    async def echo(connection: Connection) -> None:
        async for msg in connection:
            if isinstance(msg, Ping):
                await connection.send(Pong(msg.nonce))

    async with trio.open_nursery() as nursery:
        _host, port = await nursery.start(listener.serve, echo, "127.0.0.1", 0)
        yield listener, port
        nursery.cancel_scope.cancel()


async def ping_once(identity: Identity, port: int, context: ssl.SSLContext | None = None) -> None:
    """Dial, ping, expect the pong (with TLS 1.3 a refusal shows only on the first receive)."""
    connection = await dial(identity, "127.0.0.1", port, config=SMALL, context=context)
    async with connection:
        await connection.send(Ping(7))
        assert await connection.receive() == Pong(7)


def context_with(
    identity: Identity, *, trust: Identity | None = None, cert: bool = True, tls12: bool = False
) -> ssl.SSLContext:
    context = client_context(identity)
    if trust is not None:
        context.load_verify_locations(cadata=trust.ca_pem())
    if not cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.load_verify_locations(cadata=identity.ca_pem())
    if tls12:
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


REJECTED: dict[str, Callable[[Pki], ssl.SSLContext]] = {
    "certificate from another CA": lambda pki: context_with(pki.other_ca, trust=pki.sn),
    "expired certificate": lambda pki: context_with(pki.expired),
    "no certificate": lambda pki: context_with(pki.sl, cert=False),
    "TLS 1.2": lambda pki: context_with(pki.sl, tls12=True),
}


@pytest.mark.process
@pytest.mark.parametrize("make_context", REJECTED.values(), ids=REJECTED.keys())
async def test_the_listener_refuses_bad_peers_and_keeps_serving(
    pki: Pki, make_context: Callable[[Pki], ssl.SSLContext]
) -> None:
    async with running_listener(pki.sn) as (listener, port):
        with pytest.raises((RemoteProtocolError, trio.BrokenResourceError)):
            await ping_once(pki.sl, port, make_context(pki))
        with trio.fail_after(5):
            await listener.wait_statistics(lambda stats: stats.handshakes_failed == 1)
        await ping_once(pki.sl, port)
        stats = listener.statistics()
        assert (stats.connections_accepted, stats.handshakes_failed) == (2, 1)
        assert "TLS handshake failed" in stats.last_error


@pytest.mark.process
async def test_the_listener_closes_an_oversize_sender_and_keeps_serving(pki: Pki) -> None:
    async with running_listener(pki.sn) as (listener, port):
        async with await dial(pki.sl, "127.0.0.1", port, config=SMALL) as rude:
            await rude._stream.send_all(struct.pack(">I", 2**31))
            with pytest.raises((trio.BrokenResourceError, trio.EndOfChannel)):
                await rude.receive()
        await ping_once(pki.p256, port)
        stats = listener.statistics()
        assert stats.protocol_errors == 1
        assert stats.connections_accepted == 2
        assert "frame length 2147483648" in stats.last_error


@pytest.mark.process
async def test_dial_refuses_a_server_from_another_ca(pki: Pki) -> None:
    async with running_listener(pki.other_ca) as (_listener, port):
        with pytest.raises(
            RemoteProtocolError, match=r"TLS handshake failed: .*CERTIFICATE_VERIFY_FAILED"
        ):
            await dial(pki.sl, "127.0.0.1", port, config=SMALL)


async def test_closing_does_not_hang_on_a_peer_that_stops_reading(
    pki: Pki, autojump_clock: trio.abc.Clock
) -> None:
    client_stream, server_stream = trio.testing.lockstep_stream_pair()  # a send waits for a read
    accepted: list[Connection] = []

    async def accept() -> None:
        accepted.append(await accept_stream(pki.sn, server_stream, config=SMALL))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        client = await connect_stream(pki.sl, client_stream, config=SMALL)
    start = trio.current_time()
    await client.aclose()  # the server never reads the close_notify
    assert trio.current_time() - start == pytest.approx(SMALL.close_timeout_s)
    assert client.statistics().connections_open == 0
    await trio.aclose_forcefully(server_stream)
