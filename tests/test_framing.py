"""Framing: whole bodies out of any byte split, limits enforced before allocation, few copies."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarmlearn.errors import LocalProtocolError, RemoteProtocolError
from swarmlearn.p2p.framing import FrameReader, encode_frame
from swarmlearn.p2p.messages import Chunk, Goodbye, Ping
from swarmlearn.p2p.wire import Message, decode_body
from tests.wire_strategies import Bulky, Everything, message_strategy

any_message = st.one_of(
    message_strategy(Everything), message_strategy(Bulky), st.builds(Ping, st.integers(0, 100))
)


def wire_bytes(messages: list[Message]) -> bytes:
    return b"".join(bytes(buffer) for msg in messages for buffer in encode_frame(msg))


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@given(
    messages=st.lists(any_message, max_size=6),
    cuts=st.lists(st.integers(0), max_size=20),
    as_bytearray=st.booleans(),
)
def test_any_split_yields_the_same_messages(
    messages: list[Message], cuts: list[int], as_bytearray: bool
) -> None:
    reader = FrameReader()
    received = []
    for piece in split(wire_bytes(messages), cuts):
        reader.feed(bytearray(piece) if as_bytearray else piece)
        while (msg := reader.next_message()) is not None:
            received.append(msg)
    assert received == messages
    assert reader.at_boundary
    assert reader.statistics().frames == len(messages)


@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0), max_size=10))
def test_random_bytes_in_random_splits_only_raise_remote_protocol_error(
    data: bytes, cuts: list[int]
) -> None:
    reader = FrameReader(frame_bytes_max=1024)
    try:
        for piece in split(data, cuts):
            reader.feed(piece)
            while reader.next_message() is not None:
                pass
    except RemoteProtocolError:
        pass


def test_a_frame_over_the_limit_is_refused_before_allocation_and_the_reader_stays_broken() -> None:
    reader = FrameReader(frame_bytes_max=100)
    reader.feed(struct.pack(">I", 101)[:3])
    with pytest.raises(RemoteProtocolError, match=r"outside 4\.\.100"):
        reader.feed(b"\x65")
    assert reader.statistics().buffered_bytes == 0
    with pytest.raises(RemoteProtocolError):
        reader.feed(wire_bytes([Ping(1)]))


def test_a_frame_shorter_than_its_header_length_field_is_refused() -> None:
    with pytest.raises(RemoteProtocolError):
        FrameReader().feed(struct.pack(">I", 3) + b"abc")


def test_encode_refuses_a_frame_over_the_limit() -> None:
    big = Chunk(b"r", 0, bytes(1000))
    with pytest.raises(LocalProtocolError, match="exceeds the 512-byte frame limit"):
        encode_frame(big, frame_bytes_max=512)
    assert len(b"".join(bytes(b) for b in encode_frame(big, frame_bytes_max=1100))) < 1100


@pytest.mark.parametrize("limit", [0, 4, 2**32, 1.5])
def test_the_limit_itself_is_checked(limit: int) -> None:
    with pytest.raises(LocalProtocolError, match="frame_bytes_max"):
        FrameReader(frame_bytes_max=limit)


def test_a_bulk_frame_is_copied_once_into_its_own_buffer() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    data = wire_bytes([Chunk(b"r" * 32, 3, payload)])
    reader = FrameReader()
    for start in range(0, len(data), 16384):  # TLS-record-sized pieces
        reader.feed(data[start : start + 16384])
    frame = reader.next_frame()
    assert frame is not None
    msg = decode_body(frame)
    assert isinstance(msg, Chunk)
    assert isinstance(msg.data, memoryview)
    assert msg.data.obj is frame.obj  # the payload is a view of the one frame buffer
    assert msg.data == payload


def test_a_frame_inside_one_bytes_object_is_not_copied() -> None:
    data = wire_bytes([Goodbye("bye"), Ping(9)])
    reader = FrameReader()
    reader.feed(data)
    first = reader.next_frame()
    assert first is not None
    assert first.obj is data
    assert decode_body(first) == Goodbye("bye")
    assert reader.next_message() == Ping(9)
    assert reader.next_frame() is None


def test_partial_frames_are_visible_in_statistics() -> None:
    data = wire_bytes([Ping(1)])
    reader = FrameReader()
    reader.feed(data[:-1])
    assert not reader.at_boundary
    assert reader.statistics().buffered_bytes == len(data) - 4 - 1
    reader.feed(data[-1:])
    assert reader.next_message() == Ping(1)
    assert reader.at_boundary
