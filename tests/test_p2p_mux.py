"""The stream multiplexer core: opening, flow control, fairness, resets, limits and errors,
over a pair of muxes wired back to back through the wire codec (no sockets), plus
Hypothesis over arbitrary interleavings."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarmlearn.errors import LocalProtocolError, RemoteProtocolError
from swarmlearn.p2p.mux import (
    Flag,
    GoneAway,
    Mux,
    MuxConfig,
    MuxData,
    MuxEvent,
    MuxWindow,
    StreamData,
    StreamEnded,
    StreamOpened,
    StreamReset,
    Writable,
)
from swarmlearn.p2p.wire import Message, decode_body, encode_body

SMALL = MuxConfig(window_bytes=1000, frame_bytes_max=100, send_buffer_bytes_max=3000, streams_max=4)


def wire(frame: Message) -> Message:
    """Through the codec, as a connection would carry it."""
    head, payload = encode_body(frame)
    return decode_body(head + bytes(payload))


def pump(src: Mux, dst: Mux, budget_bytes: int | None = None) -> list[MuxEvent]:
    events: list[MuxEvent] = []
    for frame in src.next_frames(budget_bytes):
        events += dst.receive(wire(frame))
    return events


def data_of(events: Sequence[MuxEvent], stream: int) -> bytes:
    return b"".join(
        bytes(e.data) for e in events if isinstance(e, StreamData) and e.stream == stream
    )


def pair(config: MuxConfig = SMALL) -> tuple[Mux, Mux]:
    return Mux(client=True, config=config), Mux(client=False, config=config)


def test_a_stream_opens_with_its_first_frame_and_carries_data_both_ways() -> None:
    a, b = pair()
    stream = a.open_stream()
    assert stream == 1
    assert Mux(client=False).open_stream() == 2
    assert a.write(stream, b"hello") == 5
    syn, data = a.next_frames()
    assert syn == MuxWindow(1, Flag.SYN, 0)
    assert isinstance(data, MuxData)
    assert data.flags == 0
    events = b.receive(wire(syn)) + b.receive(wire(data))
    assert events[0] == StreamOpened(1)
    assert data_of(events, 1) == b"hello"
    b.write(1, b"back")
    ack, back = b.next_frames()
    assert ack == MuxWindow(1, Flag.ACK, 0)
    assert data_of(a.receive(wire(ack)) + a.receive(wire(back)), 1) == b"back"


def test_flow_control_sends_one_window_until_the_reader_consumes() -> None:
    a, b = pair()
    stream = a.open_stream()
    assert a.write(stream, bytes(2500)) == 2500
    received = data_of(pump(a, b), stream)
    assert len(received) == SMALL.window_bytes
    assert a.send_window(stream) == 0
    assert pump(a, b) == []  # nothing more without credit
    b.consumed(stream, 400)
    assert pump(b, a) == []  # under half a window: no update yet
    b.consumed(stream, 100)
    assert pump(b, a) == [Writable(stream)]
    assert len(data_of(pump(a, b), stream)) == 500


def test_data_beyond_the_window_breaks_the_connection() -> None:
    _, b = pair()
    b.receive(MuxData(1, Flag.SYN, b""))
    with pytest.raises(RemoteProtocolError, match="window"):
        b.receive(MuxData(1, 0, bytes(SMALL.window_bytes + 1)))
    with pytest.raises(RemoteProtocolError, match="broken"):
        b.next_frames()
    assert b.go_away_frame.code == 1


def test_a_syn_for_a_stream_of_ours_or_an_old_one_is_a_protocol_error() -> None:
    _, b = pair()
    with pytest.raises(RemoteProtocolError):
        b.receive(MuxWindow(2, Flag.SYN, 0))  # even ids are the server's
    _, b2 = pair()
    b2.receive(MuxWindow(3, Flag.SYN, 0))
    with pytest.raises(RemoteProtocolError):
        b2.receive(MuxWindow(1, Flag.SYN, 0))  # ids only grow


def test_a_reset_aborts_the_stream_on_both_sides() -> None:
    a, b = pair()
    stream = a.open_stream()
    a.write(stream, bytes(300))
    pump(a, b)
    b.reset(stream)
    assert pump(b, a) == [StreamReset(stream)]
    with pytest.raises(LocalProtocolError):
        a.write(stream, b"more")
    assert a.statistics().streams == b.statistics().streams == 0


def test_fin_both_ways_closes_the_stream() -> None:
    a, b = pair()
    stream = a.open_stream()
    a.write(stream, b"last words")
    a.close(stream)
    events = pump(a, b)
    assert events[-1] == StreamEnded(stream)
    assert data_of(events, stream) == b"last words"
    with pytest.raises(LocalProtocolError):
        a.write(stream, b"x")
    b.close(stream)
    assert pump(b, a) == [StreamEnded(stream)]
    assert a.statistics().streams == b.statistics().streams == 0


def test_streams_beyond_the_limit_are_reset() -> None:
    a, b = pair(MuxConfig(window_bytes=1000, frame_bytes_max=100, streams_max=2))
    b.receive(MuxWindow(1, Flag.SYN, 0))
    b.receive(MuxWindow(3, Flag.SYN, 0))
    assert b.receive(MuxWindow(5, Flag.SYN, 0)) == []
    assert MuxWindow(5, Flag.RST, 0) in b.next_frames()
    a.open_stream()
    a.open_stream()
    with pytest.raises(LocalProtocolError):
        a.open_stream()


def test_go_away_stops_new_streams() -> None:
    a, b = pair()
    a.go_away()
    assert pump(a, b) == [GoneAway(0)]
    with pytest.raises(LocalProtocolError):
        b.open_stream()


def test_the_write_buffer_is_bounded_and_says_when_to_write_again() -> None:
    a, b = pair()
    stream = a.open_stream()
    assert a.write(stream, bytes(5000)) == SMALL.send_buffer_bytes_max
    assert a.writable_streams() == []
    pump(a, b)
    assert a.writable_streams() == [stream]


@pytest.mark.parametrize("vote_priority", [0, 1])
def test_a_vote_is_not_stuck_behind_a_gigabyte(vote_priority: int) -> None:
    """Stream 1 always has a full buffer (a 1 GB transfer written as fast as it drains); a
    200-byte vote on its own stream goes out within one bulk frame (none at higher priority)."""
    config = MuxConfig()
    a, b = pair(config)
    bulk = a.open_stream(priority=1)
    chunk = memoryview(bytes(config.send_buffer_bytes_max))
    bulk_sent = 0
    vote_stream = None
    bulk_since_vote = None
    while bulk_sent < 1 << 30:
        a.write(bulk, chunk[: config.send_buffer_bytes_max - a.statistics().queued_bytes])
        if vote_stream is None and bulk_sent > 100 * 1024 * 1024:
            vote_stream = a.open_stream(priority=vote_priority)
            a.write(vote_stream, b"v" * 200)
            bulk_since_vote = 0
        for frame in a.next_frames(budget_bytes=256 * 1024):  # what the socket takes now
            for event in b.receive(frame):
                if isinstance(event, StreamData):
                    b.consumed(event.stream, len(event.data))
                    if event.stream == vote_stream:
                        assert bulk_since_vote is not None
                        assert bulk_since_vote <= config.frame_bytes_max * vote_priority
                        return
                    bulk_sent += len(event.data)
                    if bulk_since_vote is not None:
                        bulk_since_vote += len(event.data)
        for frame in b.next_frames():
            a.receive(frame)
    raise AssertionError("the vote never went out")


@st.composite
def operations(draw: st.DrawFn) -> list[tuple[str, int, int]]:
    return draw(
        st.lists(
            st.tuples(
                st.sampled_from(["open", "write", "consume", "close", "reset", "pump", "back"]),
                st.integers(0, 5),
                st.integers(0, 2500),
            ),
            max_size=60,
        )
    )


@given(operations())
def test_any_interleaving_delivers_exactly_what_was_written(
    ops: list[tuple[str, int, int]],
) -> None:
    a, b = pair()
    written: dict[int, bytearray] = {}
    received: dict[int, bytearray] = {}
    unconsumed: dict[int, int] = {}
    reset: set[int] = set()
    streams: list[int] = []

    def absorb(events: list[MuxEvent]) -> None:
        for event in events:
            if isinstance(event, StreamData):
                received.setdefault(event.stream, bytearray()).extend(event.data)
                unconsumed[event.stream] = unconsumed.get(event.stream, 0) + len(event.data)
                assert unconsumed[event.stream] <= SMALL.window_bytes  # bounded receive buffer
            if isinstance(event, StreamReset):
                reset.add(event.stream)

    for op, index, size in ops:
        stream = streams[index % len(streams)] if streams else None
        if op == "open" and a.statistics().streams < SMALL.streams_max:
            streams.append(a.open_stream(priority=index % 2))
        elif op == "write" and stream is not None and stream not in reset:
            data = bytes([stream % 251]) * size
            try:
                taken = a.write(stream, data)
            except LocalProtocolError:
                continue
            written.setdefault(stream, bytearray()).extend(data[:taken])
            assert a.statistics().queued_bytes <= SMALL.send_buffer_bytes_max * SMALL.streams_max
        elif op == "consume" and stream is not None:
            count = min(size, unconsumed.get(stream, 0))
            b.consumed(stream, count)
            unconsumed[stream] = unconsumed.get(stream, 0) - count
        elif op == "close" and stream is not None:
            with contextlib.suppress(LocalProtocolError):
                a.close(stream)
        elif op == "reset" and stream is not None and stream not in reset:
            b.reset(stream)
            reset.add(stream)
        elif op == "pump":
            absorb(pump(a, b, budget_bytes=size or None))
        else:
            pump(b, a)
    for _ in range(200):  # drain: the reader consumes everything, credit flows back
        absorb(pump(a, b))
        for stream, count in list(unconsumed.items()):
            b.consumed(stream, count)
            unconsumed[stream] = 0
        pump(b, a)
        if a.statistics().queued_bytes == 0:
            break
    for stream, sent in written.items():
        got = bytes(received.get(stream, b""))
        if stream in reset:
            assert bytes(sent).startswith(got)
        else:
            assert got == bytes(sent)
