"""Hypothesis strategies from message annotations, and test messages using every field kind."""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Annotated, Any

from hypothesis import strategies as st

from swarmlearn.p2p.wire import INT_MAX, INT_MIN, PAYLOAD, Message, Payload


class Color(enum.IntEnum):
    RED = 1
    GREEN = 2


@dataclasses.dataclass(frozen=True)
class Inner(Message, tag=0xC1):
    a: int
    b: str


@dataclasses.dataclass(frozen=True)
class Everything(Message, tag=0xC2):
    i: int
    flag: bool
    ratio: float
    name: str
    blob: bytes
    nothing: None
    maybe: int | None
    color: Color
    items: tuple[int, ...]
    pair: tuple[str, bytes]
    table: dict[str, int]
    inner: Inner
    inners: tuple[Inner, ...]


@dataclasses.dataclass(frozen=True)
class Bulky(Message, tag=0xC3):
    name: str
    data: Payload


def strategy_for(annotation: Any) -> st.SearchStrategy[Any]:
    """A strategy for any value a field of this annotation may hold on the wire."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Annotated and PAYLOAD in annotation.__metadata__:
        return st.binary(max_size=4096)
    simple: dict[Any, st.SearchStrategy[Any]] = {
        int: st.integers(INT_MIN, INT_MAX),
        bool: st.booleans(),
        float: st.floats(allow_nan=False),
        str: st.text(max_size=40),
        bytes: st.binary(max_size=64),
        type(None): st.none(),
    }
    if annotation in simple:
        return simple[annotation]
    if isinstance(annotation, type) and issubclass(annotation, enum.IntEnum):
        return st.sampled_from(list(annotation))
    if isinstance(annotation, type) and issubclass(annotation, Message):
        return message_strategy(annotation)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([strategy_for(arg) for arg in args])
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(strategy_for(args[0]), max_size=5).map(tuple)
        return st.tuples(*[strategy_for(arg) for arg in args])
    if origin is dict:
        return st.dictionaries(strategy_for(args[0]), strategy_for(args[1]), max_size=5)
    raise AssertionError(f"no strategy for {annotation!r}")


def message_strategy(cls: type[Message]) -> st.SearchStrategy[Message]:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {field.name: strategy_for(hints[field.name]) for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return st.builds(cls, **fields)
