"""The p2p node core: the peer table and gossip composed into one sans-IO core.

Theory of operation
-------------------
:class:`P2PNode` is what a driver (trio, or the simulator) runs for the p2p layer. It owns
one :class:`~swarmlearn.p2p.peertable.PeerTable` and, optionally, a
:class:`~swarmlearn.p2p.gossip.Gossip`, and routes every input to the core it belongs to:

- ``Receive``: first :meth:`PeerTable.observe` (any message is a sign of life); a message
  from a peer the table does not hold a connection to is dropped; then by message type
  (peer exchange and pings to the table, gossip messages to gossip);
- ``TimerFired``: by the first element of the tag (``"peers"``, ``"gossip"``): every core
  namespaces its timers that way;
- ``Request``: by the value's type (connection events to the table, publish/subscribe to
  gossip).

The table's ``Deliver(PeerUp | PeerDown)`` effects are fed to gossip at once (as
``Request`` inputs; their effects follow in order) and passed on as well. Each core draws
from its own random stream, split off the node's at construction. Weights do not travel
here: blobs and rounds go over the bulk lanes (:mod:`swarmlearn.p2p.bulk`,
:mod:`swarmlearn.p2p.bulk_push`).
"""

from __future__ import annotations

import random

from swarmlearn.p2p.gossip import (
    Gossip,
    GossipMessage,
    Graft,
    IHave,
    IWant,
    Prune,
    Publish,
    Subscribe,
    Subscriptions,
    Unsubscribe,
)
from swarmlearn.p2p.messages import Ping, Pong
from swarmlearn.p2p.peertable import (
    BanPeer,
    Connected,
    DialFailed,
    Disconnected,
    Keep,
    Learn,
    PeerDown,
    PeerExchange,
    PeerTable,
    PeerUp,
    Prefer,
)
from swarmlearn.sansio import Core, Deliver, Effect, Input, Receive, Request, Start, TimerFired

PEER_MESSAGES = (PeerExchange, Ping, Pong)
PEER_REQUESTS = (Connected, Disconnected, DialFailed, Learn, BanPeer, Keep, Prefer)
GOSSIP_MESSAGES = (Subscriptions, GossipMessage, IHave, IWant, Graft, Prune)
GOSSIP_REQUESTS = (Subscribe, Unsubscribe, Publish)


class P2PNode:
    """Peer table + gossip, one sans-IO core for the driver."""

    def __init__(self, rng: random.Random, peers: PeerTable, gossip: Gossip | None = None) -> None:
        self.rng = rng
        self.peers = peers
        self.gossip = gossip
        if gossip is not None:
            gossip.swarm_size = lambda: len(peers.known)

    def handle(self, event: Input, now: float) -> list[Effect]:
        match event:
            case Start():
                effects = self.peers.handle(event, now)
                if self.gossip is not None:
                    effects += self.gossip.handle(event, now)
                return self._follow(effects, now)
            case Receive(sender, message):
                self.peers.observe(sender, now)
                if sender not in self.peers.by_peer:
                    return []
                return self._follow(self._route_message(event, message, now), now)
            case TimerFired(tag):
                owner = tag[0] if isinstance(tag, tuple) and tag else None
                cores: dict[str, Core | None] = {"peers": self.peers, "gossip": self.gossip}
                timer_owner = cores.get(owner) if isinstance(owner, str) else None
                return self._follow(timer_owner.handle(event, now), now) if timer_owner else []
            case Request(value):
                target = self._owner_of_request(value)
                return self._follow(target.handle(event, now), now) if target else []
        return []

    def _route_message(self, event: Receive, message: object, now: float) -> list[Effect]:
        if isinstance(message, PEER_MESSAGES):
            return self.peers.handle(event, now)
        if isinstance(message, GOSSIP_MESSAGES) and self.gossip is not None:
            return self.gossip.handle(event, now)
        return []

    def _owner_of_request(self, value: object) -> Core | None:
        if isinstance(value, PEER_REQUESTS):
            return self.peers
        if isinstance(value, GOSSIP_REQUESTS):
            return self.gossip
        return None

    def _follow(self, effects: list[Effect], now: float) -> list[Effect]:
        """Pass effects on; peer up/down also goes to gossip, in place."""
        out: list[Effect] = []
        for effect in effects:
            out.append(effect)
            if self.gossip is None:
                continue
            if isinstance(effect, Deliver) and isinstance(effect.value, PeerUp | PeerDown):
                out += self.gossip.handle(Request(effect.value), now)
        return out
