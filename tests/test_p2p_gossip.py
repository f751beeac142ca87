"""The gossip core: mesh maintenance, forwarding, validation and penalties, IHAVE/IWANT, caches
and bounds, as step tables, plus Hypothesis over arbitrary input sequences."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarmlearn.p2p.gossip import (
    HEARTBEAT,
    Gossip,
    GossipConfig,
    GossipDelivery,
    GossipMessage,
    Graft,
    IHave,
    IWant,
    Prune,
    Publish,
    Subscriptions,
    Unsubscribe,
    Verdict,
    message_id,
)
from swarmlearn.p2p.gossip_cache import MessageCache, PeerScore, SeenCache
from swarmlearn.p2p.peertable import PeerDown, PeerUp
from swarmlearn.p2p.wire import Message
from swarmlearn.sansio import Deliver, Effect, Input, Receive, Request, Send, Start, TimerFired

T = "consensus"


def node(
    peers: int = 0,
    *,
    outbound: bool = False,
    config: GossipConfig | None = None,
    validators: dict[str, object] | None = None,
) -> Gossip:
    g = Gossip("me", random.Random(3), config, validators or {}, (T,))  # type: ignore[arg-type]
    g.handle(Start(), 0.0)
    for index in range(peers):
        add_peer(g, f"p{index:02d}", outbound=outbound)
    return g


def add_peer(g: Gossip, peer: str, topics: tuple[str, ...] = (T,), outbound: bool = False) -> None:
    g.handle(Request(PeerUp(peer, outbound)), 0.0)
    g.handle(Receive(peer, Subscriptions(topics)), 0.0)


def sends(effects: Sequence[Effect], kind: type[Message]) -> list[tuple[str, Message]]:
    return [
        (e.to, e.message) for e in effects if isinstance(e, Send) and isinstance(e.message, kind)
    ]


def deliveries(effects: Sequence[Effect]) -> list[GossipDelivery]:
    return [
        e.value for e in effects if isinstance(e, Deliver) and isinstance(e.value, GossipDelivery)
    ]


def beat(g: Gossip, now: float) -> list[Effect]:
    return g.handle(TimerFired(HEARTBEAT), now)


# ---------------------------------------------------------------- caches


def test_seen_cache_expires_oldest_first_and_is_bounded() -> None:
    seen = SeenCache(ttl_s=10.0, size_max=3)
    assert seen.add(b"a", 0.0)
    assert not seen.add(b"a", 1.0)
    seen.add(b"b", 5.0)
    assert seen.expire(10.0) == 1
    assert b"a" not in seen
    assert b"b" in seen
    for key in (b"c", b"d", b"e"):
        seen.add(key, 6.0)
    assert len(seen) == 3
    assert b"b" not in seen


def test_message_cache_gossips_recent_windows_and_forgets_old_ones() -> None:
    cache = MessageCache(history_length=3, history_gossip=2)
    cache.put(b"1", T, b"one")
    cache.shift()
    cache.put(b"2", T, b"two")
    cache.put(b"x", "other", b"x")
    assert cache.gossip_ids(T) == [b"2", b"1"]
    cache.shift()
    assert cache.gossip_ids(T) == [b"2"]
    assert cache.get(b"1") == (T, b"one")
    cache.shift()
    assert cache.get(b"1") is None
    assert cache.get(b"2") == (T, b"two")


def test_scores_are_squared_negative_and_decay() -> None:
    score = PeerScore(invalid=2.0)
    assert score.value(-10.0, -1.0) == -40.0
    for _ in range(100):
        score.decay(0.9)
    assert score.value(-10.0, -1.0) == 0.0


# ---------------------------------------------------------------- mesh


def test_a_new_peer_learns_our_subscriptions() -> None:
    g = node()
    assert g.handle(Request(PeerUp("p1", True)), 0.0) == [Send("p1", Subscriptions((T,)))]


def test_heartbeat_grafts_d_peers_out_of_many() -> None:
    g = node(20)
    grafts = sends(beat(g, 1.0), Graft)
    assert len(grafts) == g.config.d == len(g.mesh[T])
    assert {message for _, message in grafts} == {Graft(T, 0)}


def test_with_few_peers_the_mesh_is_all_of_them() -> None:
    g = node(10)
    beat(g, 1.0)
    assert g.mesh[T] == set(g.peers)
    assert T in g.full_mesh
    for index in range(10, 16):  # outgrown: back to d
        add_peer(g, f"p{index:02d}")
    prunes = sends(beat(g, 2.0), Prune)
    assert len(g.mesh[T]) == g.config.d
    assert len(prunes) == 10 - g.config.d


def test_graft_room_depends_on_who_asks() -> None:
    g = node(20)
    add_peer(g, "q0", outbound=True)
    for index in range(9):
        g.handle(Receive(f"p{index:02d}", Graft(T, 6)), 0.5)
    assert len(g.mesh[T]) == g.config.graft_accept_max
    refused = g.handle(Receive("p09", Graft(T, 6)), 0.5)  # inbound, not needy: no room
    # No room is no fault: a short backoff (a misbehaving peer's PRUNE carries the full one).
    assert sends(refused, Prune) == [("p09", Prune(T, g.config.trim_backoff_s))]
    g.handle(Receive("q0", Graft(T, 6)), 0.6)  # a peer we dialed: room up to d_hi
    for index in range(10, 14):
        # Below d_lo: room up to one beyond d_hi (a node that only dialed out would otherwise
        # find every peer full), and the starving peer is kept when the mesh is trimmed.
        g.handle(Receive(f"p{index:02d}", Graft(T, 1)), 0.6)
    assert len(g.mesh[T]) == g.config.d_hi + 1
    assert {"q0", "p10"} <= g.mesh[T]
    assert "p11" not in g.mesh[T]
    prunes = sends(beat(g, 1.0), Prune)
    assert len(g.mesh[T]) == g.config.d
    assert "p10" in g.mesh[T]  # rescued: kept
    assert {message for _, message in prunes} == {Prune(T, g.config.trim_backoff_s)}
    assert g.rescued == set()


def test_an_oversized_mesh_is_pruned_to_d_keeping_outbound_peers() -> None:
    g = node(20)
    for index in range(3):
        add_peer(g, f"q{index}", outbound=True)
    g.mesh[T] = {f"p{index:02d}" for index in range(14)} | {"q0"}
    g.peers["p00"].score.invalid = 0.5  # negative, but above the prune threshold
    prunes = sends(beat(g, 1.0), Prune)
    members = g.mesh[T]
    assert len(members) == g.config.d
    assert len(prunes) == 15 - g.config.d + 1
    assert sum(g.peers[p].outbound for p in members) >= g.config.d_out  # one swapped in
    assert "p00" not in members  # the d_score best are kept first


@pytest.mark.parametrize(
    ("setup", "reason"),
    [("unsubscribed", "not our topic"), ("backoff", "backoff"), ("score", "negative score")],
)
def test_grafts_are_refused_with_a_prune(setup: str, reason: str) -> None:
    g = node(3)
    if setup == "unsubscribed":
        g.handle(Request(Unsubscribe(T)), 0.0)
    elif setup == "backoff":
        g.handle(Receive("p00", Prune(T, 60)), 0.0)
    else:
        g.peers["p00"].score.invalid = 1.0
    effects = g.handle(Receive("p00", Graft(T, 0)), 1.0)
    assert sends(effects, Prune) == [("p00", Prune(T, g.config.prune_backoff_s))], reason
    assert "p00" not in g.mesh.get(T, set())
    if setup == "backoff":
        assert g.peers["p00"].score.misbehaviour == 1.0


def test_a_prune_removes_the_peer_and_backs_off_grafting_it() -> None:
    g = node(3)
    beat(g, 1.0)
    g.handle(Receive("p01", Prune(T, 30)), 2.0)
    assert "p01" not in g.mesh[T]
    assert sends(beat(g, 3.0), Graft) == []  # still in backoff
    # At the backoff's end, not yet: the peer started it when our PRUNE reached it, a little
    # later, and would penalize an early GRAFT; a heartbeat after, the GRAFT goes.
    assert sends(beat(g, 32.0), Graft) == []
    assert sends(beat(g, 33.0), Graft) == [("p01", Graft(T, 2))]


def test_peer_down_leaves_every_mesh() -> None:
    g = node(3)
    beat(g, 1.0)
    g.handle(Request(PeerDown("p01")), 2.0)
    assert "p01" not in g.mesh[T]
    assert "p01" not in g.peers


# ---------------------------------------------------------------- messages


def test_a_new_message_is_delivered_once_and_forwarded_along_the_mesh() -> None:
    g = node(20)
    beat(g, 1.0)
    source = sorted(g.mesh[T])[0]
    effects = g.handle(Receive(source, GossipMessage(T, b"vote")), 1.5)
    assert deliveries(effects) == [GossipDelivery(T, b"vote", message_id(T, b"vote"), source)]
    assert {to for to, _ in sends(effects, GossipMessage)} == g.mesh[T] - {source}
    again = g.handle(Receive(sorted(g.mesh[T])[1], GossipMessage(T, b"vote")), 1.6)
    assert deliveries(again) == []
    assert sends(again, GossipMessage) == []
    assert (g.counters.copies, g.counters.duplicates) == (2, 1)


def test_a_peer_that_repeats_a_message_is_penalized_and_pruned() -> None:
    g = node(20)
    beat(g, 1.0)
    flooder, honest = sorted(g.mesh[T])[:2]
    g.handle(Receive(flooder, GossipMessage(T, b"vote")), 1.1)
    g.handle(Receive(honest, GossipMessage(T, b"vote")), 1.1)  # a second mesh path: fine
    assert g.counters.floods == 0
    assert g.score(honest) == 0
    for index in range(6):
        g.handle(Receive(flooder, GossipMessage(T, b"vote")), 1.2 + index * 0.01)
    assert g.counters.floods == 6
    assert g.score(honest) == 0
    assert g.score(flooder) < GossipConfig().prune_threshold
    beat(g, 2.0)
    assert flooder not in g.mesh[T]
    g.handle(Receive(honest, GossipMessage(T, b"late")), 2.1)
    beat(g, 3.0)
    g.handle(Receive(honest, GossipMessage(T, b"late")), 3.5)  # after a heartbeat: forgiven
    assert g.counters.floods == 6


def test_own_messages_are_flood_published_and_not_delivered_back() -> None:
    g = node(20)
    beat(g, 1.0)
    g.peers["p19"].score.invalid = 1.0
    effects = g.handle(Request(Publish(T, b"mine")), 1.5)
    assert {to for to, _ in sends(effects, GossipMessage)} == set(g.peers) - {"p19"}
    assert deliveries(effects) == []
    assert g.handle(Request(Publish(T, b"mine")), 1.6) == []  # same content, same id


def test_a_message_its_publisher_sent_to_everyone_is_delivered_and_not_forwarded() -> None:
    g = node(20)
    beat(g, 1.0)
    effects = g.handle(Request(Publish(T, b"direct", forward=False)), 1.5)
    published = [message for _, message in sends(effects, GossipMessage)]
    assert {m.forward for m in published if isinstance(m, GossipMessage)} == {False}
    source = sorted(g.mesh[T])[0]
    received = g.handle(Receive(source, GossipMessage(T, b"vote", forward=False)), 1.6)
    assert deliveries(received) == [GossipDelivery(T, b"vote", message_id(T, b"vote"), source)]
    assert sends(received, GossipMessage) == []
    assert g.counters.not_forwarded == 1
    # Asked for by IWANT, it is served (as an ordinary message): the repair path stays.
    asker = sorted(g.mesh[T])[1]
    served = g.handle(Receive(asker, IWant((message_id(T, b"vote"),))), 1.7)
    assert [m for _, m in sends(served, GossipMessage)] == [GossipMessage(T, b"vote")]


def test_invalid_messages_are_dropped_the_sender_penalized_and_repeats_pruned() -> None:
    def valid(peer: str, topic: str, data: bytes) -> Verdict:
        return {b"bad": Verdict.REJECT, b"old": Verdict.IGNORE}.get(data, Verdict.ACCEPT)

    g = node(10, validators={T: valid})
    beat(g, 1.0)
    effects = g.handle(Receive("p00", GossipMessage(T, b"old")), 1.1)
    assert deliveries(effects) == []
    assert g.score("p00") == 0.0
    effects = g.handle(Receive("p00", GossipMessage(T, b"bad")), 1.2)
    assert deliveries(effects) == []
    assert sends(effects, GossipMessage) == []
    assert g.score("p00") == -10.0
    beat(g, 2.0)
    assert "p00" in g.mesh[T]  # one is tolerated
    g.handle(Receive("p00", GossipMessage(T, b"bad")), 2.2)  # a repeat is not validated twice
    assert g.counters.invalid == 1
    g.validators[T] = lambda *_: Verdict.REJECT
    g.handle(Receive("p00", GossipMessage(T, b"worse")), 2.3)
    assert sends(beat(g, 3.0), Prune) == [("p00", Prune(T, g.config.prune_backoff_s))]
    for index in range(3):
        g.handle(Receive("p00", GossipMessage(T, b"more %d" % index)), 3.1)
    assert g.score("p00") < g.config.graylist_threshold
    assert g.handle(Receive("p00", IHave(T, (b"x" * 20,))), 3.2) == []  # graylisted


def test_oversized_messages_are_invalid() -> None:
    g = node(3, config=GossipConfig(message_bytes_max=10))
    effects = g.handle(Receive("p00", GossipMessage(T, b"x" * 11)), 1.0)
    assert deliveries(effects) == []
    assert g.counters.invalid == 1


def test_ihave_iwant_repairs_a_missed_message() -> None:
    a, b = node(), node()
    add_peer(a, "b")
    add_peer(b, "a")
    a.handle(Receive("x", GossipMessage(T, b"hi")), 0.5)  # not a peer: ignored
    a.handle(Request(PeerUp("x", False)), 0.5)
    a.handle(Receive("x", GossipMessage(T, b"hi")), 0.6)
    a.mesh[T].discard("b")
    a.full_mesh.discard(T)
    [(to, ihave)] = sends(a._emit_gossip(T), IHave)
    assert to == "b"
    assert isinstance(ihave, IHave)
    [(_, iwant)] = sends(b.handle(Receive("a", ihave), 1.0), IWant)
    assert sends(b.handle(Receive("a", ihave), 1.1), IWant) == []  # asked already
    [(_, message)] = sends(a.handle(Receive("b", iwant), 1.2), GossipMessage)
    assert deliveries(b.handle(Receive("a", message), 1.3))[0].data == b"hi"
    for _ in range(a.config.retransmit_max):
        a.handle(Receive("b", iwant), 1.4)
    assert a.handle(Receive("b", iwant), 1.5) == []  # retransmissions are capped
    for now in range(2, 8):
        beat(a, float(now))
    assert a.mcache.get(message_id(T, b"hi")) is None


def test_sends_per_peer_per_heartbeat_are_bounded() -> None:
    g = node(3, config=GossipConfig(send_max=5))
    beat(g, 1.0)
    for index in range(10):
        g.handle(Request(Publish(T, b"%d" % index)), 1.5)
    assert g.counters.dropped_sends == 6 * 3  # a graft and 4 publishes fit, 6 do not
    assert all(state.sent <= 5 for state in g.peers.values())


def test_seen_ids_expire_after_their_ttl() -> None:
    g = node(3, config=GossipConfig(seen_ttl_s=10.0))
    assert deliveries(g.handle(Receive("p00", GossipMessage(T, b"m")), 1.0))
    assert not deliveries(g.handle(Receive("p01", GossipMessage(T, b"m")), 2.0))
    beat(g, 12.0)
    assert deliveries(g.handle(Receive("p01", GossipMessage(T, b"m")), 12.5))


# ---------------------------------------------------------------- any input sequence

PEERS = [f"p{i}" for i in range(6)]


@st.composite
def inputs(draw: st.DrawFn) -> list[tuple[float, Input]]:
    out: list[tuple[float, Input]] = []
    now = 0.0
    payloads = st.sampled_from([b"a", b"b", b"bad", b"x" * 40])
    ids = st.sampled_from([message_id(T, b"a"), message_id(T, b"b"), b"\0" * 20])
    for _ in range(draw(st.integers(0, 80))):
        now += draw(st.sampled_from([0.0, 0.3, 1.0]))
        peer = draw(st.sampled_from(PEERS))
        kind = draw(st.integers(0, 9))
        topic = draw(st.sampled_from([T, "rounds"]))
        message: Message
        if kind == 0:
            out.append((now, Request(PeerUp(peer, draw(st.booleans())))))
            continue
        if kind == 1:
            out.append((now, Request(PeerDown(peer))))
            continue
        if kind == 2:
            out.append((now, TimerFired(HEARTBEAT)))
            continue
        if kind == 3:
            out.append((now, Request(Publish(topic, draw(payloads)))))
            continue
        if kind == 4:
            message = GossipMessage(topic, draw(payloads))
        elif kind == 5:
            message = IHave(topic, tuple(draw(st.lists(ids, max_size=4))))
        elif kind == 6:
            message = IWant(tuple(draw(st.lists(ids, max_size=4))))
        elif kind == 7:
            message = Graft(topic, draw(st.integers(0, 12)))
        elif kind == 8:
            message = Prune(topic, draw(st.integers(-5, 10**6)))
        else:
            message = Subscriptions((topic,), tuple(draw(st.lists(st.just(T), max_size=1))))
        out.append((now, Receive(peer, message)))
    return out


@given(inputs())
def test_any_input_sequence_keeps_gossip_consistent(sequence: list[tuple[float, Input]]) -> None:
    def valid(peer: str, topic: str, data: bytes) -> Verdict:
        return Verdict.REJECT if data == b"bad" else Verdict.ACCEPT

    config = GossipConfig(d=3, d_lo=2, d_hi=4, d_score=2, d_out=1, graft_accept_max=4,
                          send_max=20, message_bytes_max=32)  # fmt: skip
    g = Gossip("me", random.Random(5), config, {T: valid}, (T,))
    delivered: set[bytes] = set()
    for now, event in [(0.0, Start()), *sequence]:
        for effect in g.handle(event, now):
            if isinstance(effect, Deliver):
                value = effect.value
                assert isinstance(value, GossipDelivery)
                assert value.message_id not in delivered, "delivered twice"
                assert value.data != b"bad"
                assert len(value.data) <= 32
                delivered.add(value.message_id)
            if isinstance(effect, Send):
                assert effect.to in g.peers
        for topic, members in g.mesh.items():
            assert members <= set(g.peers), "mesh peers are connected peers"
            assert topic in g.topics
            assert len(members) <= config.d_hi
        assert all(state.sent <= config.send_max for state in g.peers.values())
        if isinstance(event, TimerFired):
            for members in g.mesh.values():
                assert all(g.score(p) >= config.prune_threshold for p in members)
