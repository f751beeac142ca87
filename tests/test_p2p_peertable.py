"""The peer table core: addresses, bootstrap, peer exchange, dial dedup, identity, limits,
liveness and backoff, as step tables, plus Hypothesis over arbitrary event sequences."""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarmlearn.errors import ConfigError
from swarmlearn.p2p.messages import Ping, Pong
from swarmlearn.p2p.multiaddr import PeerAddress, parse_address, try_parse_address
from swarmlearn.p2p.peertable import (
    TICK,
    BanPeer,
    Close,
    Connected,
    Dial,
    DialFailed,
    Disconnected,
    Keep,
    Learn,
    PeerDown,
    PeerExchange,
    PeerTable,
    PeerTableConfig,
    PeerUp,
    Prefer,
)
from swarmlearn.sansio import Deliver, Effect, Input, Receive, Request, Send, Start, TimerFired

ID = "b" * 52

# ---------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"/ip4/10.0.0.5/tcp/30303/p2p/{ID}", PeerAddress("10.0.0.5", 30303, ID)),
        ("/ip6/::1/tcp/1/", PeerAddress("::1", 1)),
        ("/dns/sentinel.example/tcp/30303", PeerAddress("sentinel.example", 30303)),
        ("/dns4/n001/tcp/7/p2p/n001", PeerAddress("n001", 7, "n001")),
        ("10.0.0.5:30303", PeerAddress("10.0.0.5", 30303)),
        ("[::1]:30303", PeerAddress("::1", 30303)),
    ],
)
def test_addresses_parse_from_multiaddr_or_host_port(text: str, expected: PeerAddress) -> None:
    assert parse_address(text) == expected
    assert parse_address(str(expected)) == expected


def test_addresses_print_as_multiaddr() -> None:
    assert str(PeerAddress("10.0.0.5", 30303, ID)) == f"/ip4/10.0.0.5/tcp/30303/p2p/{ID}"
    assert str(PeerAddress("::1", 5)) == "/ip6/::1/tcp/5"
    assert str(PeerAddress("host.example", 5)) == "/dns/host.example/tcp/5"
    assert PeerAddress("::1", 5).host_port == "[::1]:5"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "/ip4/10.0.0.5/udp/30303",
        "/ip4/not-an-ip/tcp/1",
        "/ip6/10.0.0.5/tcp/1",
        "/ip4/10.0.0.5/tcp/99999",
        "/ip4/10.0.0.5/tcp/1/p2p/bad id",
        "/ip4/10.0.0.5/tcp/1/ipfs/x",
        "host",
        "::1:5",
    ],
)
def test_bad_addresses_are_one_config_error_line(text: str) -> None:
    with pytest.raises(ConfigError, match="seed"):
        parse_address(text, field="seed")
    assert try_parse_address(text) is None


# ---------------------------------------------------------------- helpers

ME = "n010"
CONFIG = PeerTableConfig(
    listen=(PeerAddress("n010", 30303),),
    seeds=(PeerAddress("sentinel", 30303),),
    outbound_target=3,
    connections_max=5,
    full_mesh_max=0,  # the caps themselves (a small swarm's full mesh: its own test)
    ping_interval_s=5.0,
    ping_timeout_s=15.0,
    dial_timeout_s=4.0,
    backoff_min_s=1.0,
    backoff_max_s=8.0,
)


def table(config: PeerTableConfig = CONFIG, me: str = ME) -> PeerTable:
    return PeerTable(me, random.Random(7), config)


def delivered(effects: Sequence[Effect], kind: type) -> list[object]:
    return [e.value for e in effects if isinstance(e, Deliver) and isinstance(e.value, kind)]


def sent(effects: Sequence[Effect], kind: type) -> list[tuple[str, object]]:
    return [
        (e.to, e.message) for e in effects if isinstance(e, Send) and isinstance(e.message, kind)
    ]


def connect(t: PeerTable, conn: int, peer: str, now: float = 0.0, **kw: object) -> list[Effect]:
    key = kw.pop("key", b"k-" + peer.encode())
    outbound = kw.pop("outbound", False)
    address = kw.pop("address", None)
    assert not kw
    event = Connected(conn, peer, key, bool(outbound), address)  # type: ignore[arg-type]
    return t.handle(Request(event), now)


def addr(peer: str) -> str:
    return str(PeerAddress(peer, 30303, peer))


# ---------------------------------------------------------------- bootstrap and exchange


def test_start_dials_the_seed_and_a_connection_to_it_resolves_its_peer_id() -> None:
    t = table()
    effects = t.handle(Start(), 0.0)
    assert delivered(effects, Dial) == [Dial(PeerAddress("sentinel", 30303))]
    assert any(getattr(e, "tag", None) == TICK for e in effects)
    effects = connect(t, 1, "n000", outbound=True, address=PeerAddress("sentinel", 30303))
    assert delivered(effects, PeerUp) == [PeerUp("n000", True)]
    [(to, exchange)] = sent(effects, PeerExchange)
    assert to == "n000"
    assert isinstance(exchange, PeerExchange)
    assert exchange.listen == (addr(ME),)
    assert t.seeds[("sentinel", 30303)].resolved == "n000"
    assert t.connected() == ["n000"]


def test_peer_exchange_teaches_addresses_and_the_table_dials_up_to_its_target() -> None:
    t = table()
    t.handle(Start(), 0.0)
    connect(t, 1, "n000", outbound=True, address=PeerAddress("sentinel", 30303))
    offered = (*(addr(f"n{i:03d}") for i in range(1, 8)), addr(ME), "garbage", "/ip4/x")
    effects = t.handle(Receive("n000", PeerExchange((addr("n000"),), offered)), 1.0)
    dials = delivered(effects, Dial)
    assert len(dials) == CONFIG.outbound_target - 1  # one outbound connection already
    assert all(isinstance(d, Dial) and d.address.peer not in (ME, "n000") for d in dials)
    assert ME not in t.known
    assert len(t.known) == 8
    assert t.known["n000"].address == PeerAddress("n000", 30303, "n000")
    # Asking for a sample in return.
    effects = t.handle(Receive("n000", PeerExchange((), (), reply=True)), 1.5)
    assert len(sent(effects, PeerExchange)) == 1


def test_learnt_addresses_are_dialed_and_a_peers_own_record_replaces_a_stale_one() -> None:
    t = table()
    t.handle(Start(), 0.0)
    connect(t, 1, "n000", outbound=True, address=PeerAddress("sentinel", 30303))
    members = (PeerAddress("n001", 1, "n001"), PeerAddress("n002", 2, "n002"))
    effects = t.handle(Request(Learn((*members, PeerAddress("me", 9, ME)))), 1.0)
    dials = [d for d in delivered(effects, Dial) if isinstance(d, Dial)]
    assert sorted(str(d.address) for d in dials) == sorted(map(str, members))
    assert ME not in t.known
    moved = PeerAddress("elsewhere", 3, "n002")
    t.handle(Request(Learn((moved,))), 1.1)
    assert t.known["n002"].address == moved
    assert t.handle(Request(Learn((PeerAddress("anyone", 4),))), 1.2) == []  # no peer id


def test_a_banned_peer_is_closed_refused_and_not_dialed_until_the_ban_ends() -> None:
    t = table()
    t.handle(Start(), 0.0)
    t.handle(Request(Learn((PeerAddress("n001", 30303, "n001"),))), 0.0)
    connect(t, 1, "n001", outbound=True, address=PeerAddress("n001", 30303, "n001"))
    effects = t.handle(Request(BanPeer("n001", 60.0, "forged transactions")), 10.0)
    assert delivered(effects, Close) == [Close(1, "banned: forged transactions")]
    assert delivered(effects, PeerDown) == [PeerDown("n001")]
    assert delivered(connect(t, 2, "n001", now=20.0), Close) == [Close(2, "banned")]

    def dialed(effects: Sequence[Effect]) -> list[str | None]:
        return [d.address.peer for d in delivered(effects, Dial) if isinstance(d, Dial)]

    ticks = [t.handle(TimerFired(TICK), now) for now in (30.0, 50.0, 69.0)]
    assert "n001" not in [peer for effects in ticks for peer in dialed(effects)]
    after = t.handle(TimerFired(TICK), 71.0)  # the ban is over: dialed again
    assert "n001" in dialed(after)
    assert t.banned == {}


def test_kept_peers_are_dialed_beyond_the_target_and_accepted_beyond_the_inbound_cap() -> None:
    t = table()  # 3 outbound, 5 in all: 2 inbound
    t.handle(Start(), 0.0)
    for conn, peer in enumerate(("n001", "n002", "n003"), start=1):
        connect(t, conn, peer, outbound=True, address=PeerAddress(peer, 1, peer))
    members = tuple(PeerAddress(f"n00{i}", 1, f"n00{i}") for i in range(1, 7))
    assert delivered(t.handle(Request(Learn(members)), 0.0), Dial) == []  # the target is met
    effects = t.handle(Request(Keep(("n004", ME))), 1.5)
    assert [d.address.peer for d in delivered(effects, Dial) if isinstance(d, Dial)] == ["n004"]
    connect(t, 4, "n004", now=1.6, outbound=True, address=PeerAddress("n004", 1, "n004"))
    connect(t, 5, "n009", now=1.7)  # an inbound one: room for 2
    assert delivered(connect(t, 6, "n008", now=1.8), Close) == []
    # Full (5): an inbound peer is refused, a kept one too once connections_max is reached.
    t.handle(Request(Keep(("n004", "n005"))), 2.0)
    refused = connect(t, 7, "n005", now=2.1)
    assert delivered(refused, Close) == [Close(7, "connection limit")]
    assert t.kept == {"n004", "n005"}


def test_links_no_longer_kept_close_after_the_grace_while_beyond_the_targets() -> None:
    """A round's links end: a peer the kept set drops is released; past ``release_grace_s``
    its link closes if the table holds more than its targets without it (no backoff: not
    the peer's fault); one the outbound target needs stays, as an ordinary link."""
    t = table(dataclasses.replace(CONFIG, release_grace_s=5.0))
    for conn, peer in enumerate(("n001", "n002", "n003"), start=1):
        connect(t, conn, peer, outbound=True, address=PeerAddress(peer, 1, peer))
    members = tuple(PeerAddress(f"n00{i}", 1, f"n00{i}") for i in range(1, 7))
    t.handle(Request(Learn(members)), 0.5)
    dials = delivered(t.handle(Request(Keep(("n004", "n005"))), 1.0), Dial)
    assert [d.address.peer for d in dials if isinstance(d, Dial)] == ["n004", "n005"]
    for conn, peer in ((4, "n004"), (5, "n005")):
        connect(t, conn, peer, now=1.5, outbound=True, address=PeerAddress(peer, 1, peer))
    assert t.statistics().outbound == 5
    assert t.handle(Request(Keep(("n005",))), 3.0) == []  # n004 released at 3.0
    assert t.released == {"n004": 3.0}
    assert delivered(t.handle(TimerFired(TICK), 7.5), Close) == []  # in its grace
    late = t.handle(TimerFired(TICK), 8.0)
    assert delivered(late, Close) == [Close(4, "no longer kept")]
    assert delivered(late, PeerDown) == [PeerDown("n004")]
    assert t.connected() == ["n001", "n002", "n003", "n005"]
    assert t.known["n004"].failures == 0
    assert t.released == {}
    # n001 goes: n005's link is one of the three the target needs, and stays when released.
    t.handle(Request(Disconnected(1)), 8.5)
    t.handle(Request(Keep(())), 9.0)
    assert delivered(t.handle(TimerFired(TICK), 14.5), Close) == []
    assert t.connected() == ["n002", "n003", "n005"]
    assert t.released == {}  # an ordinary link now


def test_a_kept_inbound_link_beyond_the_inbound_cap_closes_once_released() -> None:
    t = table(dataclasses.replace(CONFIG, release_grace_s=5.0))  # inbound cap: 2
    t.handle(Request(Keep(("n004", "n005", "n006"))), 0.0)
    for conn, peer in enumerate(("n004", "n005", "n006"), start=1):
        connect(t, conn, peer, now=0.5)  # inbound, accepted beyond the cap: kept
    assert t.statistics().inbound == 3
    t.handle(Request(Keep(("n005",))), 1.0)  # n006 and n004 released; n005 still kept
    closed = delivered(t.handle(TimerFired(TICK), 6.0), Close)
    assert closed == [Close(1, "no longer kept")]  # one over the cap: the first released
    assert t.connected() == ["n005", "n006"]


def test_messages_from_peers_without_a_connection_are_ignored() -> None:
    t = table()
    assert t.handle(Receive("n005", PeerExchange((), (addr("n001"),))), 0.0) == []
    assert t.handle(Receive("n005", Ping(1)), 0.0) == []


def test_ping_is_answered() -> None:
    t = table()
    connect(t, 1, "n001")
    assert t.handle(Receive("n001", Ping(42)), 1.0) == [Send("n001", Pong(42))]


# ---------------------------------------------------------------- one connection per pair


@pytest.mark.parametrize("me", ["n001", "n002"])
@pytest.mark.parametrize("outbound_first", [True, False])
def test_crossing_dials_end_with_the_connection_dialed_by_the_smaller_id(
    me: str, outbound_first: bool
) -> None:
    other = "n002" if me == "n001" else "n001"
    t = table(me=me)
    mine, theirs = (1, True), (2, False)  # (conn, outbound): conn 1 is the one we dialed
    first, second = (mine, theirs) if outbound_first else (theirs, mine)
    connect(t, first[0], other, outbound=first[1])
    effects = connect(t, second[0], other, outbound=second[1])
    kept = 1 if me == "n001" else 2  # both sides keep the one n001 dialed
    assert t.by_peer == {other: kept}
    closed = [c.conn for c in delivered(effects, Close) if isinstance(c, Close)]
    assert closed == [3 - kept]


def test_a_second_connection_from_the_same_dialer_replaces_the_first() -> None:
    t = table()
    connect(t, 1, "n001")
    effects = connect(t, 2, "n001", now=3.0)
    assert t.by_peer == {"n001": 2}
    assert delivered(effects, Close) == [Close(1, "replaced by a newer connection")]
    assert delivered(effects, PeerDown) == [PeerDown("n001")]
    assert delivered(effects, PeerUp) == [PeerUp("n001", False)]
    assert t.handle(Request(Disconnected(1)), 4.0) == []  # the driver's late report


# ---------------------------------------------------------------- identity and limits


def test_a_dial_that_reaches_another_peer_is_refused() -> None:
    t = table()
    address = PeerAddress("n001", 30303, "n001")
    effects = connect(t, 1, "n009", outbound=True, address=address)
    [close] = delivered(effects, Close)
    assert isinstance(close, Close)
    assert "reached" in close.reason
    assert t.connected() == []


def test_a_known_peer_presenting_a_different_key_is_refused() -> None:
    t = table()
    connect(t, 1, "n001", key=b"first")
    t.handle(Request(Disconnected(1)), 1.0)
    effects = connect(t, 2, "n001", now=2.0, key=b"second")
    assert delivered(effects, Close) == [Close(2, "known peer presented a different key")]
    assert t.counters.refused == {"known peer presented a different key": 1}
    assert connect(t, 3, "n001", now=3.0, key=b"first") != []
    assert t.connected() == ["n001"]


def test_connecting_to_itself_is_refused() -> None:
    assert delivered(connect(table(), 1, ME), Close) == [Close(1, "connected to itself")]


def test_inbound_connections_beyond_the_limit_get_addresses_and_are_closed() -> None:
    t = table()
    inbound_max = CONFIG.connections_max - CONFIG.outbound_target
    for conn in range(inbound_max):
        connect(t, conn, f"n{conn:03d}")
    effects = connect(t, 9, "n099")
    assert [to for to, _ in sent(effects, PeerExchange)] == ["n099"]
    assert delivered(effects, Close) == [Close(9, "connection limit")]
    for conn in range(20, 23):  # room is kept for the outbound target
        assert delivered(connect(t, conn, f"n{conn:03d}", outbound=True), Close) == []
    assert len(t.connected()) == CONFIG.connections_max
    assert delivered(connect(t, 30, "n030", outbound=True), Close) != []


# ---------------------------------------------------------------- liveness and backoff


def test_a_silent_connection_is_pinged_then_closed_at_the_deadline() -> None:
    t = table(PeerTableConfig(ping_interval_s=5.0, ping_timeout_s=15.0))
    connect(t, 1, "n001")
    assert sent(t.handle(TimerFired(TICK), 4.0), Ping) == []
    assert len(sent(t.handle(TimerFired(TICK), 5.0), Ping)) == 1
    assert sent(t.handle(TimerFired(TICK), 6.0), Ping) == []  # one ping per interval
    t.handle(Receive("n001", Pong(0)), 7.0)  # any message is a sign of life
    assert delivered(t.handle(TimerFired(TICK), 21.0), Close) == []
    effects = t.handle(TimerFired(TICK), 22.5)
    assert delivered(effects, Close) == [Close(1, "ping timeout")]
    assert delivered(effects, PeerDown) == [PeerDown("n001")]


def test_redials_back_off_exponentially_up_to_the_cap() -> None:
    t = table(PeerTableConfig(seeds=(PeerAddress("n001", 1, "n001"),), outbound_target=1))
    dial_times = []
    now = 0.0
    effects = t.handle(Start(), now)
    while now < 200.0:
        for dial in delivered(effects, Dial):
            assert isinstance(dial, Dial)
            dial_times.append(now)
            effects = t.handle(Request(DialFailed(dial.address, "refused")), now)
        now += 0.25
        effects = t.handle(TimerFired(TICK), now)
    gaps = [b - a for a, b in itertools.pairwise(dial_times)]
    assert gaps[0] == pytest.approx(t.config.backoff_min_s, abs=0.6)
    for early, late in itertools.pairwise(gaps[:5]):
        assert 1.4 < late / early < 2.9  # doubling, jittered by up to 25%
    assert max(gaps) <= t.config.backoff_max_s + 0.25
    assert gaps[-1] >= t.config.backoff_max_s - 0.25


def test_a_dial_nobody_answers_times_out_and_is_retried() -> None:
    t = table()
    [dial] = delivered(t.handle(Start(), 0.0), Dial)
    assert delivered(t.handle(TimerFired(TICK), 3.0), Dial) == []
    assert delivered(t.handle(TimerFired(TICK), 4.5), Dial) == []  # timed out, backing off
    later = [d for now in (5.0, 6.0, 7.0) for d in delivered(t.handle(TimerFired(TICK), now), Dial)]
    assert later == [dial]


# ---------------------------------------------------------------- any sequence of events

PEERS = [f"n{i:03d}" for i in range(8)]


@st.composite
def events(draw: st.DrawFn) -> list[tuple[float, Input]]:
    out: list[tuple[float, Input]] = []
    now = 0.0
    opened = 0  # a driver never reuses a connection id
    for _ in range(draw(st.integers(0, 60))):
        now += draw(st.sampled_from([0.0, 0.1, 1.0, 7.0]))
        peer = draw(st.sampled_from(PEERS))
        kind = draw(st.integers(0, 8))
        event: Input
        if kind == 0:
            opened += 1
            address = draw(st.sampled_from([None, PeerAddress(peer, 1, peer), PeerAddress("x", 1)]))
            key = draw(st.sampled_from([b"a", b"b"]))
            event = Request(Connected(opened, peer, key, draw(st.booleans()), address))
        elif kind == 1:
            event = Request(Disconnected(draw(st.integers(1, max(opened, 1)))))
        elif kind == 2:
            event = Request(DialFailed(PeerAddress(peer, 1, peer)))
        elif kind == 3:
            offered = draw(st.lists(st.sampled_from([addr(p) for p in PEERS] + ["junk"])))
            event = Receive(peer, PeerExchange((addr(peer),), tuple(offered), draw(st.booleans())))
        elif kind == 4:
            event = Receive(peer, draw(st.sampled_from([Ping(1), Pong(2)])))
        elif kind == 5:
            event = Request(Learn((PeerAddress(peer, 1, peer),)))
        elif kind == 6:
            event = Request(BanPeer(peer, draw(st.sampled_from([1.0, 60.0])), "test"))
        elif kind == 7:
            event = Request(Keep(tuple(draw(st.lists(st.sampled_from(PEERS), max_size=3)))))
        else:
            event = TimerFired(TICK)
        out.append((now, event))
    return out


@given(events())
def test_any_event_sequence_keeps_the_table_consistent(sequence: list[tuple[float, Input]]) -> None:
    config = PeerTableConfig(
        listen=(PeerAddress(ME, 1),), seeds=(PeerAddress("seed", 1),), outbound_target=3,
        connections_max=4, release_grace_s=1.0,
    )  # fmt: skip
    t = PeerTable(ME, random.Random(1), config)
    up: set[str] = set()
    for now, event in [(0.0, Start()), *sequence]:
        effects = t.handle(event, now)
        for effect in effects:
            if isinstance(effect, Deliver) and isinstance(effect.value, PeerUp | Dial):
                peer = effect.value.peer if isinstance(effect.value, PeerUp) else None
                peer = peer or (
                    effect.value.address.peer if isinstance(effect.value, Dial) else None
                )
                assert peer is None or t.banned.get(peer, -1.0) <= now, "a banned peer"
            if isinstance(effect, Deliver) and isinstance(effect.value, PeerUp):
                assert effect.value.peer not in up, "up twice without a down"
                up.add(effect.value.peer)
            if isinstance(effect, Deliver) and isinstance(effect.value, PeerDown):
                up.remove(effect.value.peer)
            if isinstance(effect, Deliver) and isinstance(effect.value, Dial):
                assert effect.value.address.peer not in t.by_peer
        assert up == set(t.by_peer)
        for peer, conn in t.by_peer.items():
            assert t.conns[conn].peer == peer
        assert len(t.by_peer) <= config.connections_max
        assert t.statistics().outbound == sum(t.conns[c].outbound for c in t.by_peer.values())
        assert len(t.known) <= config.known_max
        assert not set(t.released) & t.kept
        if event == TimerFired(TICK):  # released links past their grace only within targets
            stale = [
                t.conns[t.by_peer[p]]
                for p, since in t.released.items()
                if p in t.by_peer and now - since >= config.release_grace_s
            ]
            stats = t.statistics()
            if any(c.outbound for c in stale):
                assert stats.outbound <= config.outbound_target
            if any(not c.outbound for c in stale):
                assert stats.inbound <= config.connections_max - config.outbound_target


# ---------------------------------------------------------------- links: full mesh, then targets

MESH = PeerTableConfig(
    listen=(PeerAddress(ME, 30303),), seeds=(PeerAddress("sentinel", 30303),),
    outbound_target=2, links_max=6, connections_max=10, full_mesh_max=6,
)  # fmt: skip


def teach(t: PeerTable, count: int, now: float) -> list[Effect]:
    offered = tuple(addr(f"n{i:03d}") for i in range(1, count + 1))
    return t.handle(Receive("n000", PeerExchange((addr("n000"),), offered)), now)


def test_a_small_swarm_is_linked_in_full_and_sheds_to_the_targets_once_it_grows() -> None:
    t = table(MESH)
    t.handle(Start(), 0.0)
    connect(t, 0, "n000", outbound=True, address=PeerAddress("sentinel", 30303))
    dials = delivered(teach(t, 4, 1.0), Dial)  # 5 known <= full_mesh_max: dial them all
    assert sorted(d.address.peer for d in dials) == ["n001", "n002", "n003", "n004"]  # type: ignore[attr-defined]
    for conn in range(1, 5):
        connect(t, conn, f"n{conn:03d}", outbound=True, now=1.5)
    assert delivered(connect(t, 9, "n009", now=1.5), Close) == []  # the 6th link: accepted
    assert len(t.connected()) == MESH.links_max
    assert delivered(connect(t, 10, "n015", now=1.5), Close) == [Close(10, "connection limit")]
    # Past the full mesh: ordinary links back to 2 dialed + 4 accepted, newest first.
    teach(t, 20, 2.0)
    closed = delivered(t.handle(TimerFired(TICK), 3.0), Close)
    assert closed == [Close(conn, "beyond the targets") for conn in (2, 3, 4)]
    stats = t.statistics()
    assert (stats.outbound, stats.inbound) == (MESH.outbound_target, 1)


def test_a_full_mesh_that_refuses_a_joiner_learns_of_it_and_sheds_to_make_room() -> None:
    t = table(MESH)
    t.handle(Start(), 0.0)
    connect(t, 0, "n000", outbound=True, address=PeerAddress("sentinel", 30303))
    teach(t, 4, 1.0)
    for conn in range(1, 6):
        connect(t, conn, f"n{conn:03d}", outbound=conn < 5, now=1.5)
    assert len(t.connected()) == MESH.links_max  # 6 known, 6 links: a full mesh, and full
    # The joiner is refused, and known from now (no address yet): 7 known outgrow the mesh.
    assert delivered(connect(t, 9, "n009", now=2.0), Close) == [Close(9, "connection limit")]
    closed = delivered(t.handle(TimerFired(TICK), 3.0), Close)
    assert closed == [Close(conn, "beyond the targets") for conn in (2, 3, 4)]
    assert delivered(connect(t, 10, "n009", now=3.5), Close) == []  # room for it now
    # A peer known without an address takes one from any peer exchange.
    connect(t, 11, "n011", now=4.0)
    t.handle(Request(Disconnected(11)), 4.0)
    t.handle(Receive("n000", PeerExchange((), (addr("n011"),))), 5.0)
    assert t.known["n011"].address == PeerAddress("n011", 30303, "n011")


@given(st.integers(min_value=0, max_value=2**32), st.integers(min_value=8, max_value=40))
def test_ordinary_links_never_exceed_links_max(seed: int, peers: int) -> None:
    """Whoever dials in, whatever the order: a table knowing more than a full mesh holds at
    most ``links_max`` links that are not kept (the outbound target within them)."""
    t = PeerTable(ME, random.Random(seed), MESH)
    rng = random.Random(seed)
    t.handle(Start(), 0.0)
    teach(t, peers, 0.0)
    for conn in range(peers * 2):
        peer = f"n{rng.randrange(1, peers + 1):03d}"
        connect(t, conn, peer, outbound=rng.random() < 0.3, now=1.0 + conn)
        t.handle(TimerFired(TICK), 1.5 + conn)
        stats = t.statistics()
        assert stats.connected <= MESH.links_max


def test_preferred_peers_are_dialed_first_and_displace_followers_beyond_a_reserve() -> None:
    config = dataclasses.replace(MESH, full_mesh_max=0)  # 2 dialed, 4 accepted, 6 in all
    t = table(config)
    t.handle(Start(), 0.0)
    connect(t, 0, "n000", outbound=True, address=PeerAddress("sentinel", 30303))
    t.handle(Request(Prefer(("n017", "n018", "n019"))), 0.2)
    dials = delivered(teach(t, 20, 0.5), Dial)  # room for one: a preferred peer
    assert [d.address.peer for d in dials] in (["n017"], ["n018"], ["n019"])  # type: ignore[attr-defined]
    for conn, peer in enumerate(("n001", "n002", "n003", "n004"), start=1):  # followers dial in
        assert delivered(connect(t, conn, peer, now=1.0 + conn), Close) == []
    # Full: a preferred peer takes the newest follower's place, while over 2 followers remain.
    effects = connect(t, 7, "n018", now=6.0)
    assert delivered(effects, Close) == [Close(4, "room for a preferred peer")]
    effects = connect(t, 8, "n019", now=7.0)
    assert delivered(effects, Close) == [Close(3, "room for a preferred peer")]
    effects = connect(t, 9, "n017", now=8.0)  # followers n000 (dialed), n001, n002: 3 > 2
    assert delivered(effects, Close) == [Close(2, "room for a preferred peer")]
    assert delivered(connect(t, 10, "n016", now=9.0), Close) == [Close(10, "connection limit")]
    assert sorted(t.connected()) == ["n000", "n001", "n017", "n018", "n019"]
