"""Wire codec: round trips, canonical bytes, and strict validation of everything a peer sends."""

from __future__ import annotations

import contextlib
import dataclasses
import struct
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

import swarmlearn.p2p.messages  # noqa: F401  (registers the real message types)
from swarmlearn.errors import LocalProtocolError, RemoteProtocolError
from swarmlearn.p2p.messages import Chunk, Ping
from swarmlearn.p2p.wire import (
    INT_MAX,
    Message,
    decode_body,
    decode_header,
    encode_body,
    encode_header,
    message_types,
)
from tests.wire_strategies import Bulky, Color, Everything, Inner, message_strategy

ALL_TYPES = sorted(message_types().values(), key=lambda cls: cls.TAG)


def body(msg: Message) -> bytes:
    head, payload = encode_body(msg)
    return head + bytes(payload)


def raw_body(header: Any, payload: bytes = b"") -> bytes:
    encoded = cbor2.dumps(header, canonical=True)
    return struct.pack(">I", len(encoded)) + encoded + payload


def test_registry_holds_the_real_and_test_types() -> None:
    tags = {cls.TAG for cls in ALL_TYPES}
    assert {Ping.TAG, Chunk.TAG, Everything.TAG, Bulky.TAG} <= tags


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda cls: cls.__name__)
@given(data=st.data())
def test_every_message_type_round_trips(cls: type[Message], data: st.DataObject) -> None:
    msg = data.draw(message_strategy(cls))
    decoded = decode_body(body(msg))
    assert type(decoded) is cls
    assert decoded == msg
    assert encode_header(decoded) == encode_header(msg)


@given(msg=message_strategy(Everything))
def test_canonical_encoding_ignores_map_insertion_order(msg: Everything) -> None:
    reordered = dataclasses.replace(msg, table=dict(reversed(list(msg.table.items()))))
    assert encode_header(reordered) == encode_header(msg)
    assert decode_header(encode_header(msg)) == msg


def test_canonical_bytes_are_stable() -> None:
    # Golden bytes: a change here breaks every signature and hash already made.
    msg = Everything(
        i=-3,
        flag=True,
        ratio=1.5,
        name="n",
        blob=b"\x00",
        nothing=None,
        maybe=None,
        color=Color.GREEN,
        items=(1, 2),
        pair=("p", b"q"),
        table={"b": 2, "a": 1},
        inner=Inner(7, "x"),
        inners=(),
    )
    assert encode_header(msg).hex() == (
        "8e18c222f5f93e00616e4100f6f6028201028261704171a261610161620282076178 80".replace(" ", "")
    )


def test_payload_travels_raw_and_comes_back_as_a_view_of_the_frame() -> None:
    data = bytes(range(256)) * 64
    head, payload = encode_body(Chunk(b"r" * 32, 5, memoryview(data)))
    assert payload.obj is data  # not copied on the way out
    assert len(head) < 64  # the chunk is not inside the CBOR header
    frame = bytearray(head + data)
    decoded = decode_body(frame)
    assert isinstance(decoded, Chunk)
    assert isinstance(decoded.data, memoryview)
    assert decoded.data.obj is frame  # a view of the received frame: no copy
    assert decoded.data == data


def test_payload_may_be_bytes_bytearray_or_a_typed_view() -> None:
    numbers = memoryview(bytearray(8)).cast("I")
    for data in (b"abcd", bytearray(b"abcd"), numbers):
        decoded = decode_body(body(Bulky("x", data)))
        assert isinstance(decoded, Bulky)
        assert bytes(decoded.data) == bytes(memoryview(data).cast("B"))


BAD_BODIES = {
    "empty": b"",
    "short length field": b"\x00\x00",
    "header longer than body": struct.pack(">I", 50) + b"\x80",
    "not cbor": struct.pack(">I", 1) + b"\xff",
    "not an array": raw_body({"tag": 1}),
    "empty array": raw_body([]),
    "unknown tag": raw_body([0xBEEF, 1]),
    "tag is text": raw_body(["ping", 1]),
    "missing field": raw_body([Ping.TAG]),
    "extra field": raw_body([Ping.TAG, 1, 2]),
    "wrong type": raw_body([Ping.TAG, "1"]),
    "bool is not int": raw_body([Ping.TAG, True]),
    "int over 64 bits": raw_body([Ping.TAG, INT_MAX + 1]),
    "float is not int": raw_body([Ping.TAG, 1.0]),
    "trailing bytes in header": struct.pack(">I", 3) + cbor2.dumps([Ping.TAG, 1]) + b"\x00",
    "payload on a message without one": raw_body([Ping.TAG, 1], b"extra"),
    "tagged value": raw_body([Ping.TAG, cbor2.CBORTag(1, 5)]),
    "bytes for payload-less chunk header": raw_body([Chunk.TAG, "r", 1]),
    "bad enum value": raw_body([Everything.TAG, *[0] * 13]),
    "nested message wrong arity": raw_body([Inner.TAG, 1]),
    "deep nesting": struct.pack(">I", 2001) + b"\x81" * 2000 + b"\x01",
    "indefinite array": struct.pack(">I", 4) + b"\x9f\x01\x01\xff",
}


@pytest.mark.parametrize("data", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_invalid_bodies_are_remote_protocol_errors(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_body(data)


def test_duplicate_map_keys_are_rejected() -> None:
    good = Everything(
        0, False, 0.0, "", b"", None, None, Color.RED, (), ("", b""), {}, Inner(0, ""), ()
    )
    header = bytearray(encode_header(good))
    empty_map = header.index(b"\xa0")
    header[empty_map : empty_map + 1] = b"\xa2\x61a\x01\x61a\x02"  # {"a": 1, "a": 2}
    with pytest.raises(RemoteProtocolError, match="undecodable"):
        decode_header(bytes(header))


@given(st.binary(max_size=200))
def test_random_bytes_only_raise_remote_protocol_error(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_body(data)


@given(
    msg=message_strategy(Everything),
    flips=st.lists(st.tuples(st.integers(0), st.integers(1, 255)), min_size=1, max_size=4),
)
def test_corrupted_messages_decode_or_raise_remote_protocol_error(
    msg: Everything, flips: list[tuple[int, int]]
) -> None:
    data = bytearray(body(msg))
    for position, mask in flips:
        data[position % len(data)] ^= mask
    try:
        decoded = decode_body(bytes(data))
    except RemoteProtocolError:
        return
    assert decode_body(body(decoded)) == decoded  # whatever decodes is a valid message


cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=12,
)


@given(cls=st.sampled_from(ALL_TYPES), fields=st.lists(cbor_values, max_size=14))
def test_well_formed_cbor_of_the_wrong_shape_is_rejected_cleanly(
    cls: type[Message], fields: list[Any]
) -> None:
    try:
        decoded = decode_body(raw_body([cls.TAG, *fields]))
    except RemoteProtocolError:
        return
    assert type(decoded) is cls


@pytest.mark.parametrize(
    "msg",
    [
        Ping("1"),  # type: ignore[arg-type]
        Ping(True),
        Ping(2**64),
        Inner(1, b"x"),  # type: ignore[arg-type]
        Chunk(b"r", 1, "not bytes"),  # type: ignore[arg-type]
        Everything(0, False, 0.0, "", b"", None, None, 1, (), ("", b""), {}, Inner(0, ""), ()),  # type: ignore[arg-type]
    ],
    ids=["str", "bool", "too big", "bytes for str", "str payload", "int for enum"],
)
def test_encoding_a_wrong_field_is_a_local_protocol_error(msg: Message) -> None:
    with pytest.raises(LocalProtocolError):
        encode_body(msg)


def test_a_tag_cannot_be_registered_twice() -> None:
    with pytest.raises(LocalProtocolError, match="already used by Ping"):

        @dataclasses.dataclass(frozen=True)
        class Impostor(Message, tag=Ping.TAG):
            nonce: int


def test_unsupported_field_types_are_refused_when_first_used() -> None:
    @dataclasses.dataclass(frozen=True)
    class Odd(Message, tag=0xCF):
        values: list[int]

    with pytest.raises(LocalProtocolError, match="unsupported field type"):
        encode_body(Odd([1]))
