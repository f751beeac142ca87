"""Gossip pub/sub (sans-IO): the gossipsub v1.1 mesh with lazy IHAVE/IWANT gossip.

Theory of operation
-------------------
Each node keeps, per subscribed topic, a *mesh*: a subset of its connected peers that also
subscribe. A new message is pushed in full along the mesh (every node forwards it once, to
its mesh peers but the one it came from) and announced lazily: every heartbeat a node sends
``IHAVE`` with the ids of recent messages to ``d_lazy`` topic peers outside its mesh, who
ask with ``IWANT`` for what they missed. So a message costs about ``D`` full copies per node
and losses are repaired by gossip.

- **Ids and dedup**: a message is ``(topic, data)``, its id the first 20 bytes of
  SHA-256 over ``len(topic) | topic | data`` (content-addressed; no author, no sequence
  number: gossipsub's *StrictNoSign* mode — authentication is the payload's business, e.g.
  signed votes). Ids live in a :class:`~swarmlearn.p2p.gossip_cache.SeenCache` for
  ``seen_ttl_s``: a second copy is counted and dropped.
- **Mesh maintenance** (every ``heartbeat_s``): peers with a negative score leave the mesh;
  below ``d_lo`` it grafts up to ``d``; above ``d_hi`` it prunes down to ``d``, keeping the
  ``d_score`` best-scored and at least ``d_out`` peers it dialed itself (against eclipse).
  In a small swarm (at most ``full_mesh_max`` other nodes known, see
  :attr:`Gossip.swarm_size`) the mesh is every topic peer: a full mesh. The mesh is kept
  near ``d`` = 4 (``d_hi`` 6, inbound GRAFTs accepted below 5), fewer than gossipsub's usual
  6 (and 12): every full copy a node receives costs it a TLS read, a decode and a dedup, and
  on 2 cores running 32 validators that CPU, not the network, sets the commit latency
  (copies per message 7.5 -> 3.7 at 16 validators; the simulator's extra hop costs ~10 ms).
  A GRAFT is refused (PRUNE back) when the topic is not ours, the peer is in backoff, its
  score is negative, or our mesh has no room: up to ``graft_accept_max`` for a peer that
  dialed us, ``d_hi`` for one we dialed, and one beyond ``d_hi`` for a peer whose own mesh
  is below ``d_lo`` (it is kept at the next trim: a node that only dialed out, to peers at
  ``d_hi``, would otherwise be refused everywhere). PRUNE carries a backoff during which
  neither side grafts the other: ``prune_backoff_s`` for a fault (a negative score, a GRAFT
  in backoff), ``trim_backoff_s`` when the mesh only needed room (a full mesh outgrown, an
  oversized one trimmed, no room), so that a node pruned by every peer at once grafts again
  within seconds rather than a minute. A node grafts a peer one heartbeat after its backoff
  ends (the peer's copy of it started a little later: v1.1's backoff slack).
- **Publishing**: own messages are flood-published to every topic peer with a
  non-negative score, not just the mesh, and never delivered back to the publisher. A
  publisher that knows its flood reaches every node that needs the message (a swarm node
  linked to every validator) publishes it with ``forward=False``: receivers deliver it and
  do not forward it (a mesh of N would otherwise cost every node N-1 copies of it; a copy
  lost on the way is repaired by the application, as the ledger's status exchange does).
- **Validation**: a per-topic hook ``(source peer, topic, data) -> Verdict``. ``REJECT``
  drops the message and counts an invalid message against the peer that sent it (a
  squared, decaying penalty: one is tolerated, two take it out of every mesh, four make us
  ignore it altogether); ``IGNORE`` drops it without penalty. A message id is marked seen
  before validation, so a repeated invalid message costs one validation.
- **Flooding**: a mesh peer forwards a message once; the same message twice from one peer
  within a heartbeat counts as misbehaviour against it (the squared P7 term), so a peer
  that replays messages at us falls out of the mesh and then gets ignored.
- **Bounds**: a message over ``message_bytes_max`` is invalid; per peer and heartbeat, at
  most ``ihave_max`` IHAVEs are heeded, ``iwant_ids_max`` ids asked and served, and
  ``send_max`` messages queued (beyond: dropped and counted, like a full driver queue);
  subscriptions per peer are capped at ``topics_max``. Caches are bounded (see the cache
  module).

Inputs: ``Request(PeerUp | PeerDown)`` from the peer table, ``Request(Subscribe |
Unsubscribe | Publish)`` from the application, gossip messages, the heartbeat timer.
Effects: sends, ``Deliver(GossipDelivery)`` for every accepted message of a subscribed topic,
and metrics (``gossip.copies``: full copies received, the D+1 figure).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from swarmlearn.p2p.gossip_cache import MessageCache, MessageId, PeerScore, SeenCache
from swarmlearn.p2p.gossip_messages import (
    TOPIC_BYTES_MAX,
    TOPIC_CONSENSUS,
    TOPIC_MEMBERSHIP,
    TOPIC_ROUNDS,
    GossipConfig,
    GossipCounters,
    GossipDelivery,
    GossipMessage,
    Graft,
    IHave,
    IWant,
    Prune,
    Publish,
    Subscribe,
    Subscriptions,
    Unsubscribe,
    Validator,
    Verdict,
    message_id,
)
from swarmlearn.p2p.peertable import PeerDown, PeerUp
from swarmlearn.p2p.wire import Message
from swarmlearn.sansio import (
    Deliver,
    Effect,
    Input,
    Metric,
    NodeId,
    Receive,
    Request,
    Send,
    SetTimer,
    Start,
    TimerFired,
)

HEARTBEAT = ("gossip", "heartbeat")

__all__ = [
    "HEARTBEAT",
    "TOPIC_CONSENSUS",
    "TOPIC_MEMBERSHIP",
    "TOPIC_ROUNDS",
    "Gossip",
    "GossipConfig",
    "GossipCounters",
    "GossipDelivery",
    "GossipMessage",
    "Graft",
    "IHave",
    "IWant",
    "Prune",
    "Publish",
    "Subscribe",
    "Subscriptions",
    "Unsubscribe",
    "Validator",
    "Verdict",
    "message_id",
]


@dataclass
class _Peer:
    outbound: bool
    topics: set[str] = field(default_factory=set)
    score: PeerScore = field(default_factory=PeerScore)
    ihaves: int = 0  # this heartbeat
    iwant_ids: int = 0  # asked of it this heartbeat
    served_ids: int = 0  # served to it this heartbeat
    sent: int = 0  # messages queued to it this heartbeat


class Gossip:
    """The gossipsub core (see the module docstring)."""

    def __init__(
        self,
        me: NodeId,
        rng: random.Random,
        config: GossipConfig | None = None,
        validators: Mapping[str, Validator] | None = None,
        topics: tuple[str, ...] = (),
    ) -> None:
        self.me = me
        self.rng = rng
        self.config = config = config or GossipConfig()
        self.validators = dict(validators or {})
        self.peers: dict[NodeId, _Peer] = {}
        self.topics: set[str] = set(topics)
        self.mesh: dict[str, set[NodeId]] = {topic: set() for topic in topics}
        self.full_mesh: set[str] = set()  # topics whose mesh is all topic peers (few of them)
        #: How many other nodes this one knows of (the composing node asks its peer table);
        #: a swarm of at most full_mesh_max of them is a full mesh.
        self.swarm_size: Callable[[], int] = lambda: len(self.peers)
        self.backoff: dict[tuple[str, NodeId], float] = {}
        #: Peers taken into a full mesh because theirs was below d_lo: kept at the next trim.
        self.rescued: set[tuple[str, NodeId]] = set()
        self.seen = SeenCache(config.seen_ttl_s, config.seen_max)
        self.mcache = MessageCache(config.history_length, config.history_gossip)
        self.requested: dict[MessageId, float] = {}  # IWANT sent, until when not to ask again
        self.retransmits: dict[tuple[NodeId, MessageId], int] = {}
        #: (peer, message id) received this heartbeat: a repeat from one peer is flooding.
        self.received_from: set[tuple[NodeId, MessageId]] = set()
        self.counters = GossipCounters()

    # ------------------------------------------------------------ queries

    def score(self, peer: NodeId) -> float:
        state = self.peers.get(peer)
        if state is None:
            return 0.0
        return state.score.value(self.config.invalid_weight, self.config.misbehaviour_weight)

    def topic_peers(self, topic: str) -> list[NodeId]:
        return sorted(p for p, state in self.peers.items() if topic in state.topics)

    def flood_peers(self, topic: str) -> list[NodeId]:
        """The peers an own message on ``topic`` is published to: topic peers whose score is
        not negative (a publisher that counts on reaching a peer directly must count these)."""
        return [peer for peer in self.topic_peers(topic) if self.score(peer) >= 0]

    # ------------------------------------------------------------ the core

    def handle(self, event: Input, now: float) -> list[Effect]:
        match event:
            case Start():
                return [SetTimer(HEARTBEAT, self.rng.uniform(0, self.config.heartbeat_s))]
            case Request(PeerUp(peer, outbound)):
                self.peers[peer] = _Peer(outbound)
                topics = tuple(sorted(self.topics))
                return [Send(peer, Subscriptions(topics))] if topics else []
            case Request(PeerDown(peer)):
                self.peers.pop(peer, None)
                for members in self.mesh.values():
                    members.discard(peer)
                return []
            case Request(Subscribe(topic)):
                return self._subscribe(topic)
            case Request(Unsubscribe(topic)):
                return self._unsubscribe(topic, now)
            case Request(Publish(topic, data, forward)):
                return self._publish(topic, bytes(data), now, forward=forward)
            case Receive(sender, message) if sender in self.peers:
                if self.score(sender) < self.config.graylist_threshold:
                    return []
                return self._receive(sender, message, now)
            case TimerFired(tag) if tag == HEARTBEAT:
                return [SetTimer(HEARTBEAT, self.config.heartbeat_s), *self._heartbeat(now)]
            case _:
                return []

    def _receive(self, sender: NodeId, message: Message, now: float) -> list[Effect]:
        match message:
            case GossipMessage(topic, data, forward):
                return self._on_message(sender, topic, data, now, forward=forward)
            case IHave(topic, ids):
                return self._on_ihave(sender, topic, ids, now)
            case IWant(ids):
                return self._on_iwant(sender, ids)
            case Graft(topic, mesh):
                return self._on_graft(sender, topic, mesh, now)
            case Prune(topic, backoff_s):
                self.mesh.get(topic, set()).discard(sender)
                backoff_s = min(max(backoff_s, 0), 10 * self.config.prune_backoff_s)
                self.backoff[(topic, sender)] = now + backoff_s
                return []
            case Subscriptions(subscribe, unsubscribe):
                self._on_subscriptions(sender, subscribe, unsubscribe)
                return []
            case _:
                return []

    def _send(self, peer: NodeId, message: Message) -> list[Effect]:
        """One send, unless the peer's queue for this heartbeat is full (then dropped)."""
        state = self.peers[peer]
        if state.sent >= self.config.send_max:
            self.counters.dropped_sends += 1
            return [Metric("gossip.dropped_sends", 1)]
        state.sent += 1
        return [Send(peer, message)]

    # ------------------------------------------------------------ subscriptions

    def _subscribe(self, topic: str) -> list[Effect]:
        if topic in self.topics:
            return []
        self.topics.add(topic)
        members = self.mesh.setdefault(topic, set())
        effects: list[Effect] = []
        for peer in self._sample(self._eligible(topic, 0.0), self.config.d):
            effects += self._send(peer, Graft(topic, len(members)))
            members.add(peer)
        for peer in sorted(self.peers):
            effects += self._send(peer, Subscriptions((topic,)))
        return effects

    def _unsubscribe(self, topic: str, now: float) -> list[Effect]:
        if topic not in self.topics:
            return []
        self.topics.discard(topic)
        effects: list[Effect] = []
        for peer in sorted(self.mesh.pop(topic, set())):
            effects += self._prune(topic, peer, self.config.prune_backoff_s, now)
        for peer in sorted(self.peers):
            effects += self._send(peer, Subscriptions((), (topic,)))
        return effects

    def _on_subscriptions(
        self, sender: NodeId, subscribe: tuple[str, ...], unsubscribe: tuple[str, ...]
    ) -> None:
        state = self.peers[sender]
        for topic in subscribe:
            if len(state.topics) < self.config.topics_max and len(topic) <= TOPIC_BYTES_MAX:
                state.topics.add(topic)
        for topic in unsubscribe:
            state.topics.discard(topic)
            self.mesh.get(topic, set()).discard(sender)

    # ------------------------------------------------------------ messages

    def _publish(self, topic: str, data: bytes, now: float, *, forward: bool) -> list[Effect]:
        mid = message_id(topic, data)
        if not self.seen.add(mid, now):
            return []
        self.mcache.put(mid, topic, data)
        self.counters.published += 1
        message = GossipMessage(topic, data, forward)
        effects: list[Effect] = []
        for peer in self.flood_peers(topic):
            effects += self._send(peer, message)
        return effects

    def _on_message(
        self, sender: NodeId, topic: str, data: bytes, now: float, *, forward: bool = True
    ) -> list[Effect]:
        self.counters.copies += 1
        effects: list[Effect] = [Metric("gossip.copies", 1)]
        mid = message_id(topic, data)
        self.requested.pop(mid, None)
        first_from_sender = (sender, mid) not in self.received_from
        if first_from_sender:
            self.received_from.add((sender, mid))
        if not self.seen.add(mid, now):
            self.counters.duplicates += 1
            if not first_from_sender:  # the same message twice from one peer: flooding
                self.counters.floods += 1
                self.peers[sender].score.misbehaviour += 1
                effects.append(Metric("gossip.floods", 1))
            return effects
        verdict = Verdict.REJECT if len(data) > self.config.message_bytes_max else Verdict.ACCEPT
        validator = self.validators.get(topic)
        if verdict is Verdict.ACCEPT and validator is not None:
            verdict = validator(sender, topic, data)
        if verdict is Verdict.REJECT:
            self.counters.invalid += 1
            self.peers[sender].score.invalid += 1
            return [*effects, Metric("gossip.invalid", 1)]
        if verdict is Verdict.IGNORE:
            self.counters.ignored += 1
            return effects
        self.mcache.put(mid, topic, data)
        if topic in self.topics:
            self.counters.delivered += 1
            effects.append(Deliver(GossipDelivery(topic, data, mid, sender)))
        if not forward:  # its publisher reached everyone who needs it (IWANT still serves it)
            self.counters.not_forwarded += 1
            return effects
        message = GossipMessage(topic, data)
        for peer in sorted(self.mesh.get(topic, ())):
            if peer != sender:
                effects += self._send(peer, message)
        return effects

    def _on_ihave(
        self, sender: NodeId, topic: str, ids: tuple[bytes, ...], now: float
    ) -> list[Effect]:
        state = self.peers[sender]
        state.ihaves += 1
        if (
            topic not in self.topics
            or state.ihaves > self.config.ihave_max
            or self.score(sender) < self.config.gossip_threshold
        ):
            return []
        budget = self.config.iwant_ids_max - state.iwant_ids
        wanted = []
        for mid in ids[: max(budget, 0)]:
            if mid not in self.seen and self.requested.get(mid, -1.0) < now:
                wanted.append(mid)
                self.requested[mid] = now + 3 * self.config.heartbeat_s
        state.iwant_ids += len(wanted)
        return self._send(sender, IWant(tuple(wanted))) if wanted else []

    def _on_iwant(self, sender: NodeId, ids: tuple[bytes, ...]) -> list[Effect]:
        state = self.peers[sender]
        if self.score(sender) < self.config.gossip_threshold:
            return []
        effects: list[Effect] = []
        for mid in ids:
            if state.served_ids >= self.config.iwant_ids_max:
                break
            found = self.mcache.get(mid)
            count = self.retransmits.get((sender, mid), 0)
            if found is None or count >= self.config.retransmit_max:
                continue
            self.retransmits[(sender, mid)] = count + 1
            state.served_ids += 1
            effects += self._send(sender, GossipMessage(*found))
        return effects

    # ------------------------------------------------------------ mesh control

    def _on_graft(self, sender: NodeId, topic: str, mesh: int, now: float) -> list[Effect]:
        config = self.config
        members = self.mesh.get(topic)
        state = self.peers[sender]
        if members is not None and sender in members:
            return []
        # Room up to d_hi for a peer we dialed, one beyond d_hi for a peer whose mesh is below
        # d_lo (kept at the next trim: a node that only dialed out, to peers at d_hi, would
        # otherwise be refused everywhere), else up to graft_accept_max; in a full mesh (a
        # small swarm) for every topic peer.
        starving = mesh < config.d_lo
        if self._small(topic):
            room = config.full_mesh_max
        elif starving:
            room = config.d_hi + 1
        elif state.outbound:
            room = config.d_hi
        else:
            room = config.graft_accept_max
        backoff_s = config.prune_backoff_s
        if self.backoff.get((topic, sender), -1.0) > now:
            state.score.misbehaviour += 1  # v1.1: a GRAFT during backoff is penalized
        elif members is not None and self.score(sender) >= 0:
            if len(members) < room:
                members.add(sender)
                if starving and len(members) > config.d_hi:
                    self.rescued.add((topic, sender))
                return []
            backoff_s = config.trim_backoff_s  # no room: no fault of the peer's
        self.counters.grafts_refused += 1
        return self._prune(topic, sender, backoff_s, now)

    def _small(self, topic: str) -> bool:
        """A small swarm: few enough topic peers and known nodes for a full mesh."""
        limit = self.config.full_mesh_max
        return len(self.topic_peers(topic)) <= limit and self.swarm_size() <= limit

    def _eligible(self, topic: str, now: float) -> list[NodeId]:
        """Topic peers that may join the mesh: not in it, not in backoff (nor within a heartbeat
        of its end: the peer started the same backoff when our PRUNE, or its own, reached it,
        a little later, and a GRAFT before its end is penalized; v1.1's backoff slack), and
        not negative."""
        members = self.mesh.get(topic, set())
        graft_after = now - self.config.heartbeat_s  # backoffs that ended by then are over
        return [
            peer
            for peer in self.topic_peers(topic)
            if peer not in members
            and self.backoff.get((topic, peer), graft_after) <= graft_after
            and self.score(peer) >= 0
        ]

    def _sample(self, peers: list[NodeId], count: int) -> list[NodeId]:
        return sorted(self.rng.sample(peers, max(0, min(count, len(peers)))))

    def _heartbeat(self, now: float) -> list[Effect]:
        config = self.config
        for state in self.peers.values():
            state.score.decay(config.score_decay)
            state.ihaves = state.iwant_ids = state.served_ids = state.sent = 0
        self.received_from.clear()
        effects: list[Effect] = []
        for topic in sorted(self.topics):
            effects += self._maintain(topic, now)
            effects += self._emit_gossip(topic)
        self.rescued.clear()
        self.mcache.shift()
        self.seen.expire(now)
        self.backoff = {key: until for key, until in self.backoff.items() if until > now}
        self.requested = {mid: until for mid, until in self.requested.items() if until > now}
        self.retransmits = {
            key: count for key, count in self.retransmits.items() if self.mcache.get(key[1])
        }
        return effects

    def _maintain(self, topic: str, now: float) -> list[Effect]:
        config = self.config
        members = self.mesh.setdefault(topic, set())
        prune = sorted(p for p in members if self.score(p) < config.prune_threshold)
        faulty = set(prune)
        members.difference_update(prune)
        graft: list[NodeId] = []
        eligible = self._eligible(topic, now)
        was_full = topic in self.full_mesh
        if self._small(topic):
            self.full_mesh.add(topic)  # few topic peers: the mesh is all of them
            graft = eligible
        else:
            self.full_mesh.discard(topic)
            if len(members) > config.d_hi or (was_full and len(members) > config.d):
                keep = self._keep(topic, sorted(members))  # oversized, or a full mesh outgrown
                prune += sorted(members - keep)
                members.intersection_update(keep)
            elif len(members) < config.d_lo:
                graft = self._sample(eligible, config.d - len(members))
        outbound = sum(1 for p in members if self.peers[p].outbound)
        if len(members) >= config.d_lo and outbound < config.d_out:
            # Too few peers we dialed ourselves: swap some in (the mesh does not grow past d).
            dialed = [p for p in eligible if self.peers[p].outbound]
            more = self._sample(dialed, config.d_out - outbound)
            graft += more
            inbound = sorted(p for p in members if not self.peers[p].outbound)
            excess = len(members) + len(more) - config.d
            prune += self._sample(inbound, min(excess, len(more)))
            members.difference_update(prune)
        effects: list[Effect] = []
        size = len(members)
        for peer in sorted(set(graft)):
            members.add(peer)
            effects += self._send(peer, Graft(topic, size))
        for peer in prune:
            backoff_s = config.prune_backoff_s if peer in faulty else config.trim_backoff_s
            effects += self._prune(topic, peer, backoff_s, now)
        return effects

    def _prune(self, topic: str, peer: NodeId, backoff_s: int, now: float) -> list[Effect]:
        """PRUNE ``peer`` from ``topic``'s mesh: neither side grafts the other for ``backoff_s``
        (a full backoff for a fault, a short one when the mesh only needed room)."""
        self.backoff[(topic, peer)] = now + backoff_s
        return self._send(peer, Prune(topic, backoff_s))

    def _keep(self, topic: str, members: list[NodeId]) -> set[NodeId]:
        """Keep ``d`` of an oversized mesh: the peers rescued since the last trim, ``d_score``
        best, then random; ``d_out`` outbound."""
        config = self.config
        shuffled = self.rng.sample(members, len(members))
        ranked = sorted(shuffled, key=lambda p: ((topic, p) in self.rescued, self.score(p)))
        ranked.reverse()
        keep = ranked[: config.d_score]
        rest = ranked[config.d_score :]
        keep += rest[: config.d - len(keep)]
        outbound = [p for p in keep if self.peers[p].outbound]
        spare = [p for p in rest[config.d - config.d_score :] if self.peers[p].outbound]
        while len(outbound) < config.d_out and spare:
            removable = [p for p in keep[config.d_score :] if not self.peers[p].outbound]
            if not removable:
                break
            keep.remove(removable[-1])
            keep.append(spare.pop(0))
            outbound = [p for p in keep if self.peers[p].outbound]
        return set(keep)

    def _emit_gossip(self, topic: str) -> list[Effect]:
        ids = self.mcache.gossip_ids(topic)[: self.config.iwant_ids_max]
        if not ids:
            return []
        members = self.mesh.get(topic, set())
        eligible = [
            peer
            for peer in self.topic_peers(topic)
            if peer not in members and self.score(peer) >= self.config.gossip_threshold
        ]
        targets = self.rng.sample(eligible, min(self.config.d_lazy, len(eligible)))
        effects: list[Effect] = []
        for peer in sorted(targets):
            effects += self._send(peer, IHave(topic, tuple(ids)))
        return effects
