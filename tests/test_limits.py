"""What a peer can make a node hold (issue 19): frame buffers grow with the bytes that arrive,
frames over their type's limit are refused from the header, a budget bounds bytes in flight in
all, and a peer that stops mid-frame is cut off (trio's autojump clock over memory streams)."""

from __future__ import annotations

import struct

import pytest
import trio

from swarmlearn.errors import RemoteProtocolError
from swarmlearn.p2p.framing import FrameReader, encode_frame
from swarmlearn.p2p.limits import (
    HEADER_FRAME_BYTES_MAX,
    ByteBudget,
    FrameRefused,
    frame_bytes_max_for,
)
from swarmlearn.p2p.messages import Chunk, Ping
from swarmlearn.p2p.transport import TransportConfig
from swarmlearn.p2p.wire import peek_tag
from tests.conftest import Pki
from tests.test_transport import connection_pair

MIB = 1024 * 1024


def announce(message_head: bytes, body_len: int) -> bytes:
    """A frame prefix that announces ``body_len`` bytes, and the first bytes of a body."""
    return struct.pack(">I", body_len) + message_head


def chunk_head() -> bytes:
    """The first bytes of a Chunk frame's body (its header; the payload would follow)."""
    prefixed = bytes(encode_frame(Chunk(b"r" * 32, 0, b""))[0])
    return prefixed[4:]


def ping_head() -> bytes:
    return bytes(encode_frame(Ping(7))[0])[4:]


def test_a_frame_buffer_grows_with_the_bytes_that_arrive_not_the_length_announced() -> None:
    reader = FrameReader(typed=True)
    reader.feed(announce(chunk_head(), 64 * MIB - 1))
    assert reader.statistics().buffered_bytes == len(chunk_head())
    assert reader.pending_body_bytes == 64 * MIB - 1
    reader.feed(b"x" * 1000)
    assert reader.statistics().buffered_bytes == len(chunk_head()) + 1000


def test_the_tag_is_read_from_the_first_bytes_of_a_body() -> None:
    head = ping_head()
    assert peek_tag(head, len(head)) == Ping.TAG
    assert peek_tag(head[:3], 1000) is None
    with pytest.raises(RemoteProtocolError):
        peek_tag(struct.pack(">I", 4) + b"\x01\x02\x03\x04" + bytes(8), 100)


def test_a_frame_over_its_types_limit_is_refused_from_the_header() -> None:
    assert frame_bytes_max_for(Ping.TAG, 64 * MIB) == HEADER_FRAME_BYTES_MAX
    assert frame_bytes_max_for(Chunk.TAG, 64 * MIB) == 64 * MIB
    reader = FrameReader(typed=True)
    with pytest.raises(FrameRefused, match="limit of message tag"):
        reader.feed(announce(ping_head(), HEADER_FRAME_BYTES_MAX + 1))
    with pytest.raises(FrameRefused):  # the reader stays broken: the connection must close
        reader.feed(b"more")
    unknown = struct.pack(">I", 4) + b"\x81\x19\xff\xfe"  # [0xfffe]: no message has that tag
    with pytest.raises(FrameRefused, match="unknown message tag"):
        FrameReader(typed=True).feed(announce(unknown, 100))
    # an untyped reader (the local socket) takes the length as the only limit
    FrameReader().feed(announce(ping_head(), HEADER_FRAME_BYTES_MAX + 1))


def test_bytes_in_flight_beyond_each_reserve_come_from_one_total() -> None:
    budget = ByteBudget(total_bytes_max=MIB, reserve_bytes=MIB // 2)
    first, second, third = (FrameReader(typed=True, budget=budget) for _ in range(3))
    first.feed(announce(chunk_head(), 4 * MIB))
    first.feed(b"x" * (MIB // 2))  # the reserve, and its header's bytes over it
    assert 0 < budget.held_bytes < MIB // 2
    second.feed(announce(chunk_head(), 4 * MIB))
    second.feed(b"x" * (MIB // 2 + 100 * 1024))
    held = budget.held_bytes
    third.feed(announce(chunk_head(), 4 * MIB))
    with pytest.raises(FrameRefused, match="budget"):
        third.feed(b"x" * (2 * MIB))
    assert budget.held_bytes == held
    assert budget.refused == 1
    first.close()
    second.close()
    assert budget.held_bytes == 0


def test_a_whole_frame_gives_its_bytes_back() -> None:
    budget = ByteBudget(total_bytes_max=4 * MIB, reserve_bytes=1024)
    reader = FrameReader(typed=True, budget=budget)
    for buffer in encode_frame(Chunk(b"r" * 32, 1, b"y" * (2 * MIB))):
        reader.feed(bytearray(buffer))  # not bytes: copied piece by piece
    assert budget.held_bytes == 0
    assert budget.held_bytes_peak > MIB
    message = reader.next_message()
    assert isinstance(message, Chunk)
    assert len(message.data) == 2 * MIB


QUICK = TransportConfig(frame_timeout_s=5, frame_rate_min_bytes_s=MIB, handshake_timeout_s=5)


async def test_a_peer_that_stops_mid_frame_is_cut_off_and_counted(
    pki: Pki, autojump_clock: trio.abc.Clock
) -> None:
    async with connection_pair("memory", pki.sl, pki.sn, QUICK) as (client, server):
        await client._stream.send_all(announce(chunk_head(), 4 * MIB))
        started = trio.current_time()
        with pytest.raises(RemoteProtocolError, match="to arrive"):
            await server.receive()
        # 5 s, plus a second per MiB announced (4), waiting on the peer
        assert trio.current_time() - started == pytest.approx(9, abs=0.5)
        assert server.statistics().frame_timeouts == 1
        assert server.statistics().protocol_errors == 1


async def test_time_the_node_spends_between_reads_is_not_the_peers(
    pki: Pki, autojump_clock: trio.abc.Clock
) -> None:
    async with connection_pair("memory", pki.sl, pki.sn, QUICK) as (client, server):
        frame = b"".join(bytes(b) for b in encode_frame(Chunk(b"r" * 32, 2, b"z" * 1000)))
        await client._stream.send_all(frame + frame[:50])
        assert isinstance(await server.receive(), Chunk)
        await trio.sleep(60)  # the node is busy; the peer sent half a frame meanwhile
        await client._stream.send_all(frame[50:])
        assert isinstance(await server.receive(), Chunk)
        assert server.statistics().frame_timeouts == 0


async def test_an_idle_deadline_closes_a_silent_connection(
    pki: Pki, autojump_clock: trio.abc.Clock
) -> None:
    idle = TransportConfig(idle_timeout_s=30, handshake_timeout_s=5)
    async with connection_pair("memory", pki.sl, pki.sn, idle) as (_, server):
        with pytest.raises(RemoteProtocolError, match="idle"):
            await server.receive()
        assert server.statistics().idle_timeouts == 1
