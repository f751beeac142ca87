"""Wire codec: typed, frozen messages to and from canonical CBOR (sans-IO).

Theory of operation
-------------------
A message is a frozen dataclass that subclasses :class:`Message` with a type tag::

    @dataclass(frozen=True)
    class Ping(Message, tag=0x01):
        nonce: int

Subclassing registers the class under its tag (a duplicate tag is a
:class:`LocalProtocolError` at import time). The first time a class is encoded
or decoded its field annotations are compiled into a codec; the set of field
types is closed (see :func:`_compile`), so every message can be validated
exactly.

A message travels as a *body* (the framing module puts a length in front)::

    u32 header_len | header | payload          (big-endian)

``header`` is canonical CBOR of ``[tag, field_1, field_2, ...]`` in
declaration order, leaving out the message's one :data:`Payload` field if it
has one. ``payload`` is that field's raw bytes, empty otherwise. Bulk data
(weight chunks) is therefore never pushed through the CBOR encoder (which
would also turn a ``memoryview`` into a list of integers) and comes out of the
decoder as a ``memoryview`` of the received frame: no copy.

Decoding is strict: an unknown tag, a wrong field count, a field of the wrong
type (``bool`` is not ``int``, a list is not ``bytes``), an integer out of the
64-bit range, trailing bytes after the header, or a payload on a message that
has no payload field raise :class:`RemoteProtocolError`, and nothing else.
Encoding checks the same rules and raises :class:`LocalProtocolError`.

Tag ranges: 0x01-0x0F transport control, 0x10-0x3F p2p (gossip, transfer),
0x40-0x7F consensus, 0x80-0xBF swarm rounds and roles, 0xC0-0xFF reserved for
tests and experiments.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import struct
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Final

import cbor2

from swarmlearn.errors import LocalProtocolError, RemoteProtocolError

Buffer = bytes | bytearray | memoryview


class _PayloadMarker:
    def __repr__(self) -> str:
        return "PAYLOAD"


PAYLOAD: Final = _PayloadMarker()

#: Annotation of a message's bulk field: sent raw after the header, received
#: as a ``memoryview`` of the frame. At most one per message.
Payload = Annotated[Buffer, PAYLOAD]

INT_MIN: Final = -(2**63)
INT_MAX: Final = 2**64 - 1
HEADER_LEN = struct.Struct(">I")
TAG_MAX: Final = 0xFFFF

_CBOR_DEPTH_MAX: Final = 32

_registry: dict[int, type[Message]] = {}


class Message:
    """Base of every wire message; subclass with ``tag=`` and ``@dataclass(frozen=True)``."""

    TAG: ClassVar[int]

    def __init_subclass__(cls, *, tag: int, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if type(tag) is not int or not 0 < tag <= TAG_MAX:
            raise LocalProtocolError(f"{cls.__qualname__}: tag must be an int in 1..{TAG_MAX}")
        other = _registry.get(tag)
        if other is not None and _qualified(other) != _qualified(cls):
            raise LocalProtocolError(
                f"{cls.__qualname__}: tag {tag:#x} is already used by {other.__qualname__}"
            )
        cls.TAG = tag
        _registry[tag] = cls


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def message_types() -> dict[int, type[Message]]:
    """Every registered message class by tag (a copy)."""
    return dict(sorted(_registry.items()))


def message_type_count() -> int:
    """How many message classes are registered (cheap: asked for every frame read)."""
    return len(_registry)


class _FieldError(Exception):
    pass


# A converter checks one value and returns its other form (to_wire or from_wire).
_Convert = Callable[[Any], Any]


@dataclasses.dataclass(frozen=True)
class _Codec:
    cls: type[Message]
    names: tuple[str, ...]
    to_wire: tuple[_Convert, ...]
    from_wire: tuple[_Convert, ...]
    payload_name: str | None
    #: Fields a message on the wire must have: trailing fields with defaults may be absent (a
    #: message from an older version, before they were added), and take their defaults.
    required: int = 0


_codecs: dict[type[Message], _Codec] = {}


def _codec(cls: type[Message]) -> _Codec:
    codec = _codecs.get(cls)
    if codec is None:
        codec = _codecs[cls] = _compile_message(cls)
    return codec


def _compile_message(cls: type[Message]) -> _Codec:
    if not dataclasses.is_dataclass(cls):
        raise LocalProtocolError(f"{cls.__qualname__} must be a @dataclass(frozen=True)")
    hints = typing.get_type_hints(cls, include_extras=True)
    names: list[str] = []
    to_wire: list[_Convert] = []
    from_wire: list[_Convert] = []
    payload_name: str | None = None
    required = 0
    # In the order of the constructor's parameters: keyword-only fields (a base class's, such
    # as :class:`swarmlearn.consensus.ledger.txs.Unique`'s nonce) go last, as they do there.
    for field in sorted(dataclasses.fields(cls), key=lambda field: field.kw_only is True):
        annotation = hints[field.name]
        if _is_payload(annotation):
            if payload_name is not None:
                raise LocalProtocolError(f"{cls.__qualname__}: more than one Payload field")
            payload_name = field.name
            continue
        names.append(field.name)
        has_default = not (
            field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        )
        required = required if has_default else len(names)
        out, into = _compile(annotation, f"{cls.__qualname__}.{field.name}")
        to_wire.append(out)
        from_wire.append(into)
    codec = _Codec(cls, tuple(names), tuple(to_wire), tuple(from_wire), payload_name, required)
    return codec


def _is_payload(annotation: Any) -> bool:
    return typing.get_origin(annotation) is Annotated and PAYLOAD in annotation.__metadata__


def _exact(kind: type) -> tuple[_Convert, _Convert]:
    def check(value: Any) -> Any:
        if type(value) is not kind:
            raise _FieldError(f"expected {kind.__name__}, got {type(value).__name__}")
        return value

    return check, check


def _float_out(value: Any) -> Any:
    """Encoding a float field takes an int too (30 means 30.0); decoding stays strict."""
    if type(value) is int:
        return float(value)
    if type(value) is not float:
        raise _FieldError(f"expected float, got {type(value).__name__}")
    return value


def _check_int(value: Any) -> Any:
    if type(value) is not int:
        raise _FieldError(f"expected int, got {type(value).__name__}")
    if not INT_MIN <= value <= INT_MAX:
        raise _FieldError("integer outside the 64-bit range")
    return value


def _compile(annotation: Any, where: str) -> tuple[_Convert, _Convert]:
    """Compile one field annotation into (to_wire, from_wire) converters.

    The closed set of field types: int (64-bit), bool, float, str, bytes, None,
    IntEnum subclasses, ``X | None``, ``tuple[T, ...]``, ``tuple[A, B]``,
    ``dict[K, V]`` and nested messages (encoded without their tag).
    """
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is int:
        return _check_int, _check_int
    if annotation is float:
        return _float_out, _exact(float)[1]
    if annotation in (bool, str, bytes):
        return _exact(annotation)
    if annotation is type(None) or annotation is None:
        return _exact(type(None))
    if isinstance(annotation, type) and issubclass(annotation, enum.IntEnum):
        return _compile_enum(annotation)
    if isinstance(annotation, type) and issubclass(annotation, Message):
        return _compile_nested(annotation)
    if origin in (typing.Union, types.UnionType):
        return _compile_union([_compile(arg, where) for arg in args])
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return _compile_sequence(_compile(args[0], where))
        return _compile_fixed_tuple([_compile(arg, where) for arg in args])
    if origin is dict:
        return _compile_dict(_compile(args[0], where), _compile(args[1], where))
    raise LocalProtocolError(f"{where}: unsupported field type {annotation!r}")


def _compile_enum(kind: type[enum.IntEnum]) -> tuple[_Convert, _Convert]:
    def out(value: Any) -> Any:
        if not isinstance(value, kind):
            raise _FieldError(f"expected {kind.__name__}, got {type(value).__name__}")
        return int(value)

    def into(value: Any) -> Any:
        _check_int(value)
        try:
            return kind(value)
        except ValueError:
            raise _FieldError(f"{value} is not a valid {kind.__name__}") from None

    return out, into


def _compile_nested(kind: type[Message]) -> tuple[_Convert, _Convert]:
    def out(value: Any) -> Any:
        if type(value) is not kind:
            raise _FieldError(f"expected {kind.__name__}, got {type(value).__name__}")
        codec = _codec(kind)
        if codec.payload_name is not None:
            raise _FieldError(f"{kind.__name__} has a Payload field and cannot be nested")
        return _fields_to_wire(codec, value)

    def into(value: Any) -> Any:
        return _fields_from_wire(_codec(kind), value)

    return out, into


def _compile_union(options: list[tuple[_Convert, _Convert]]) -> tuple[_Convert, _Convert]:
    def pick(index: int) -> _Convert:
        def convert(value: Any) -> Any:
            reasons = []
            for option in options:
                try:
                    return option[index](value)
                except _FieldError as error:
                    reasons.append(str(error))
            raise _FieldError(" or ".join(reasons))

        return convert

    return pick(0), pick(1)


def _compile_sequence(item: tuple[_Convert, _Convert]) -> tuple[_Convert, _Convert]:
    def pick(index: int, accepted: tuple[type, ...]) -> _Convert:
        convert = item[index]

        def sequence(value: Any) -> Any:
            if type(value) not in accepted:
                raise _FieldError(f"expected a sequence, got {type(value).__name__}")
            return tuple(convert(element) for element in value)

        return sequence

    return pick(0, (tuple,)), pick(1, (list,))


def _compile_fixed_tuple(items: list[tuple[_Convert, _Convert]]) -> tuple[_Convert, _Convert]:
    def pick(index: int, accepted: tuple[type, ...]) -> _Convert:
        def fixed(value: Any) -> Any:
            if type(value) not in accepted or len(value) != len(items):
                raise _FieldError(f"expected a {len(items)}-tuple")
            return tuple(item[index](element) for item, element in zip(items, value, strict=True))

        return fixed

    return pick(0, (tuple,)), pick(1, (list,))


def _compile_dict(
    key: tuple[_Convert, _Convert], val: tuple[_Convert, _Convert]
) -> tuple[_Convert, _Convert]:
    def pick(index: int) -> _Convert:
        def mapping(value: Any) -> Any:
            if type(value) is not dict:
                raise _FieldError(f"expected a map, got {type(value).__name__}")
            return {key[index](k): val[index](v) for k, v in value.items()}

        return mapping

    return pick(0), pick(1)


def _fields_to_wire(codec: _Codec, msg: Message) -> list[Any]:
    wire = []
    for name, convert in zip(codec.names, codec.to_wire, strict=True):
        try:
            wire.append(convert(getattr(msg, name)))
        except _FieldError as error:
            raise _FieldError(f"{codec.cls.__qualname__}.{name}: {error}") from None
    return wire


def _fields_from_wire(codec: _Codec, wire: Any, payload: memoryview | None = None) -> Any:
    if type(wire) is not list or not codec.required <= len(wire) <= len(codec.names):
        raise _FieldError(f"{codec.cls.__qualname__}: expected {len(codec.names)} fields")
    values: dict[str, Any] = {}
    for name, convert, value in zip(codec.names, codec.from_wire, wire, strict=False):
        try:
            values[name] = convert(value)
        except _FieldError as error:
            raise _FieldError(f"{codec.cls.__qualname__}.{name}: {error}") from None
    if codec.payload_name is not None:
        values[codec.payload_name] = payload if payload is not None else memoryview(b"")
    return codec.cls(**values)


def encode_header(msg: Message) -> bytes:
    """Canonical CBOR of ``[tag, fields...]`` (the payload left out): what gets hashed or signed."""
    codec = _codec(type(msg))
    try:
        fields = _fields_to_wire(codec, msg)
    except _FieldError as error:
        raise LocalProtocolError(f"cannot encode {error}") from None
    return bytes(cbor2.dumps([msg.TAG, *fields], canonical=True))


def payload_of(msg: Message) -> memoryview:
    """The message's bulk payload as a byte view (empty when it has none)."""
    name = _codec(type(msg)).payload_name
    if name is None:
        return memoryview(b"")
    data = getattr(msg, name)
    if not isinstance(data, bytes | bytearray | memoryview):
        raise LocalProtocolError(
            f"cannot encode {type(msg).__qualname__}.{name}: expected a bytes-like payload"
        )
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def encode_body(msg: Message) -> tuple[bytes, memoryview]:
    """Encode to ``(u32 header_len | header, payload)`` for the framing layer to send as is."""
    header = encode_header(msg)
    return HEADER_LEN.pack(len(header)) + header, payload_of(msg)


def decode_body(body: Buffer) -> Message:
    """Decode one frame body; anything invalid is a :class:`RemoteProtocolError`.

    The payload field of the result is a view of ``body``: keep ``body`` alive
    (and unmodified) as long as the message is used.
    """
    view = memoryview(body)
    if len(view) < HEADER_LEN.size:
        raise RemoteProtocolError("frame body shorter than its header length field")
    (header_len,) = HEADER_LEN.unpack_from(view)
    end = HEADER_LEN.size + header_len
    if end > len(view):
        raise RemoteProtocolError(f"header length {header_len} exceeds the frame body")
    wire = _loads_exact(view[HEADER_LEN.size : end])
    if type(wire) is not list or not wire:
        raise RemoteProtocolError("message header is not a non-empty CBOR array")
    tag = wire[0]
    cls = _registry.get(tag) if type(tag) is int else None
    if cls is None:
        raise RemoteProtocolError(f"unknown message type {tag!r:.40}")
    codec = _codec(cls)
    payload = view[end:]
    if payload and codec.payload_name is None:
        raise RemoteProtocolError(
            f"{cls.__qualname__} carries no payload, got {len(payload)} bytes"
        )
    try:
        return typing.cast(Message, _fields_from_wire(codec, wire[1:], payload))
    except _FieldError as error:
        raise RemoteProtocolError(f"invalid {error}") from None


def _loads_exact(header: memoryview) -> Any:
    stream = io.BytesIO(header)
    try:
        decoder = cbor2.CBORDecoder(
            stream,
            max_depth=_CBOR_DEPTH_MAX,
            allow_indefinite=False,
            allow_duplicate_keys=False,
        )
        value = decoder.decode()
    except Exception as error:  # the decoder is the seam: any failure is the peer's
        raise RemoteProtocolError(f"undecodable CBOR header: {error}") from None
    if stream.tell() != len(header):
        raise RemoteProtocolError(f"{len(header) - stream.tell()} trailing bytes after the header")
    return value


def decode_header(header: Buffer) -> Message:
    """Decode canonical header bytes (as from :func:`encode_header`) of a payload-less message."""
    data = bytes(header)
    return decode_body(HEADER_LEN.pack(len(data)) + data)


def has_payload(cls: type[Message]) -> bool:
    """True when ``cls`` has a :data:`Payload` field (its frames may carry bulk bytes)."""
    return _codec(cls).payload_name is not None


#: Enough of a body to read its message tag: ``header_len``, the array head, the tag.
TAG_PEEK_BYTES: Final = HEADER_LEN.size + 9 + 3


def peek_tag(start: Buffer, body_len: int) -> int | None:
    """The message tag from the first bytes of a body (``body_len`` long in all), or None
    while too few have arrived; :class:`RemoteProtocolError` when they cannot be a message's."""
    view = memoryview(start).cast("B")[:body_len]
    if len(view) < HEADER_LEN.size + 1:
        return None
    (header_len,) = HEADER_LEN.unpack(view[: HEADER_LEN.size])
    head = view[HEADER_LEN.size : HEADER_LEN.size + header_len]
    if head[0] >> 5 != 4 or head[0] & 0x1F > 27:
        raise RemoteProtocolError("frame body does not start with a message header")
    at = 1 + {24: 1, 25: 2, 26: 4, 27: 8}.get(head[0] & 0x1F, 0)
    if len(head) <= at:
        _need_more(view, body_len, HEADER_LEN.size + header_len)
        return None
    first = head[at]
    if first >> 5 != 0 or first & 0x1F > 25:
        raise RemoteProtocolError("message tag is not a small unsigned integer")
    size = {24: 1, 25: 2}.get(first & 0x1F, 0)
    if len(head) < at + 1 + size:
        _need_more(view, body_len, HEADER_LEN.size + header_len)
        return None
    return first & 0x1F if size == 0 else int.from_bytes(head[at + 1 : at + 1 + size], "big")


def _need_more(view: memoryview, body_len: int, header_end: int) -> None:
    """None (wait for more bytes), unless the header or body already ended."""
    if len(view) >= min(header_end, body_len):
        raise RemoteProtocolError("message header cut short")
