"""The peer table (sans-IO): discovery, peer exchange, liveness, redial backoff, limits.

Theory of operation
-------------------
The table decides which connections a node holds; the driver carries them out. Connection
events reach the core as ``Request`` values and its commands leave as ``Deliver`` values:

==================================  ========================================================
input (``Request(...)``)            meaning
==================================  ========================================================
:class:`Connected`                  a TLS handshake finished (peer id and key from the cert)
:class:`Disconnected`               a connection ended (the core may have closed it itself)
:class:`DialFailed`                 a dial to an address failed or timed out
:class:`Learn`                      addresses from outside (a ledger's members): seeds
:class:`BanPeer`                    a peer misbehaved: closed, refused, not dialed for a time
:class:`Keep`                       peers to hold a connection with now (a round's participants)
:class:`Prefer`                     peers to link with first (a validator: the other validators)
==================================  ========================================================

Effects: ``Deliver(Dial(address))`` and ``Deliver(Close(conn, reason))`` are commands for the
driver (a ``Close`` sends what was queued on that connection, then closes it); the core
forgets a connection as soon as it closes it. ``Deliver(PeerUp(peer))`` and
``Deliver(PeerDown(peer))`` tell the layers above (gossip, transfer) who is reachable.
``Send`` goes to a peer's one current connection.

- **Bootstrap**: the configured seeds (the sentinel's address, ``host:port`` or a multiaddr,
  with or without a peer id) are dialed at start and whenever the node has no connection.
- **Peer exchange**: on every accepted connection both sides send :class:`PeerExchange`
  (their own listen addresses and a random sample of known ones). A node short of peers
  with no one left to dial asks a random connected peer for more (``reply=True``). A peer's
  address comes only from its own ``listen`` field or, until then, from others' samples.
- **Identity**: a connection's peer is the peer id of its certificate. A dial to an address
  that names a peer id and reaches another peer is refused, and so is a known peer whose
  key differs from the one first seen (on real nodes the id is the key's hash, so the second
  check guards drivers and tests that separate them).
- **One connection per pair**: when two connections to the same peer exist, both sides
  keep the one dialed by the smaller peer id (so crossing dials end with one connection),
  except that a second connection dialed by the *same* side replaces the first (the dialer
  restarted or saw the old one die).
- **Limits**: the node dials until it has ``outbound_target`` outbound connections; its
  ordinary links are at most ``links_max`` (gossip's ``d_hi``: a mesh never needs more), so
  inbound ones are capped at ``links_max - outbound_target`` (:attr:`PeerTableConfig.
  inbound_max`) and outbound ones always fit. Kept peers come beyond, within
  ``connections_max`` in all. Twice as many inbound slots as outbound dials (4 dialed, 8
  accepted by default) leave every joiner room: a node does not hold N-1 links in a swarm of
  N, whatever N. A small swarm (at most ``full_mesh_max`` peers known, and no more than
  the links allow) is a full mesh instead:
  the node dials every peer it knows and accepts up to ``links_max`` links in all (one hop
  between any two nodes, and a node linked to every validator needs no gossip forwarding).
  Once it knows more, the links beyond the targets close, newest first (:meth:`_shed`), so
  that a swarm grown past the full mesh leaves its joiners room.
  A refused connection gets a peer exchange (whom else to try) before it is closed, and its
  peer is known from then on (without an address until a peer exchange names one): a full
  mesh that refuses a joiner learns that it has outgrown itself. Fewer inbound slots than
  twice the outbound dials (``links_max < 3 * outbound_target``) can leave a joiner refused
  everywhere, every slot taken by the nodes that came first.
- **Liveness**: every message counts as a sign of life (the composing node calls
  :meth:`PeerTable.observe`). A connection silent for ``ping_interval_s`` gets a
  :class:`~swarmlearn.p2p.messages.Ping`; one silent for ``ping_timeout_s`` is closed.
- **Kept peers** (:class:`Keep`): peers the node needs a connection with now (a swarm node:
  the participants of its sync round) are dialed beyond ``outbound_target`` and accepted
  beyond the inbound cap, within ``connections_max``; the set replaces the previous one.
  A peer the new set no longer names is *released*: once ``release_grace_s`` has passed
  (the round's last messages and fetches), its link is closed if the table holds more than
  its targets without it (outbound links beyond ``outbound_target``, inbound ones beyond the
  inbound cap), oldest release first; a link the targets need stays, as an ordinary one.
  So a node's links come back to the table's targets plus the peers named now.
- **Preferred peers** (:class:`Prefer`): dialed before others, and a preferred peer that
  finds the links full takes the place of the newest inbound link to a peer not preferred
  (``PREFER_RESERVE`` such links stay). A validator prefers the other validators: with
  ordinary links capped at ``d_hi``, followers dialing in would otherwise fill a validator's
  links and its votes would reach the others over several hops.
- **Bans**: a banned peer's connection is closed, its connections are refused and it is not
  dialed until the ban ends (the node's police decides; the table carries it out).
- **Backoff**: each failed dial, and each connection that dies young, doubles a peer's redial
  delay from ``backoff_min_s`` up to ``backoff_max_s`` (jittered, capped); a connection that
  lived ``ping_timeout_s`` resets it.

Everything time-driven happens on one periodic tick, so a stale timer cannot exist.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from swarmlearn.errors import LocalProtocolError
from swarmlearn.p2p.messages import Ping, Pong
from swarmlearn.p2p.multiaddr import PeerAddress, try_parse_address
from swarmlearn.p2p.wire import Message
from swarmlearn.sansio import (
    Deliver,
    Effect,
    Input,
    Log,
    Metric,
    NodeId,
    Receive,
    Request,
    Send,
    SetTimer,
    Start,
    TimerFired,
)

TICK = ("peers", "tick")
#: Links to peers not preferred that a preferred peer's link never displaces.
PREFER_RESERVE = 2


@dataclass(frozen=True)
class PeerExchange(Message, tag=0x11):
    """The sender's own listen addresses and a sample of peers it knows (multiaddr strings)."""

    listen: tuple[str, ...]
    peers: tuple[str, ...]
    reply: bool = False  # the sender asks for our sample in return


# ---------------------------------------------------------------- driver events and commands


@dataclass(frozen=True)
class Connected:
    conn: int  # the driver's id for this connection, unique on this node
    peer: NodeId  # from the verified certificate
    key: bytes  # fingerprint of the certificate's public key
    outbound: bool
    address: PeerAddress | None = None  # the address dialed, for outbound connections


@dataclass(frozen=True)
class Disconnected:
    conn: int
    reason: str = ""


@dataclass(frozen=True)
class DialFailed:
    address: PeerAddress
    reason: str = ""


@dataclass(frozen=True)
class Learn:
    """Addresses with peer ids from outside the table (a swarm node: its ledger's members)."""

    addresses: tuple[PeerAddress, ...]


@dataclass(frozen=True)
class BanPeer:
    peer: NodeId
    duration_s: float
    reason: str


@dataclass(frozen=True)
class Keep:
    """Peers to hold a connection with now, beyond the outbound target (replaces the last)."""

    peers: tuple[NodeId, ...]


@dataclass(frozen=True)
class Prefer:
    """Peers to link with first within the ordinary links (replaces the last): a validator
    prefers the other validators, whose votes it needs in one hop."""

    peers: tuple[NodeId, ...]


@dataclass(frozen=True)
class Dial:
    address: PeerAddress  # ``address.peer``: whom the handshake must reach (None: anyone)


@dataclass(frozen=True)
class Close:
    conn: int
    reason: str


@dataclass(frozen=True)
class PeerUp:
    peer: NodeId
    outbound: bool


@dataclass(frozen=True)
class PeerDown:
    peer: NodeId


@dataclass(frozen=True)
class PeerTableConfig:
    listen: tuple[PeerAddress, ...] = ()  # our advertised addresses
    seeds: tuple[PeerAddress, ...] = ()  # bootstrap: the sentinel's address (or several)
    outbound_target: int = 4
    links_max: int = 12  # ordinary links (gossip's d_hi); kept peers come beyond
    connections_max: int = 32  # every link, kept ones too
    full_mesh_max: int = 12  # knowing at most this many peers (and links), link to all of them
    known_max: int = 1000
    pex_max: int = 32
    ping_interval_s: float = 5.0
    ping_timeout_s: float = 15.0
    dial_timeout_s: float = 10.0
    backoff_min_s: float = 0.5
    backoff_max_s: float = 30.0
    tick_s: float = 0.5
    release_grace_s: float = 60.0  # a link no longer kept, beyond the targets: closed after

    def __post_init__(self) -> None:
        if not 0 <= self.outbound_target <= min(self.links_max, self.connections_max):
            raise ValueError("need 0 <= outbound_target <= links_max and connections_max")
        if not 0 < self.ping_interval_s < self.ping_timeout_s:
            raise ValueError("need 0 < ping_interval_s < ping_timeout_s")
        if not 0 < self.backoff_min_s <= self.backoff_max_s or self.tick_s <= 0:
            raise ValueError("need 0 < backoff_min_s <= backoff_max_s and tick_s > 0")
        if self.release_grace_s < 0:
            raise ValueError("need release_grace_s >= 0")

    @property
    def links(self) -> int:
        """Ordinary links, at most."""
        return min(self.links_max, self.connections_max)

    @property
    def inbound_max(self) -> int:
        """Inbound links not kept, at most: room for the outbound target within the links."""
        return self.links - self.outbound_target


@dataclass
class _Dialable:
    """A known address (a peer's, or a seed whose peer id is not known yet)."""

    address: PeerAddress
    key: bytes | None = None  # pinned at the first connection
    resolved: NodeId | None = None  # a seed: the peer it turned out to be
    failures: int = 0
    next_dial_s: float = 0.0
    dialing_since: float | None = None

    @classmethod
    def unaddressed(cls, peer: NodeId) -> _Dialable:
        """A peer known by its connection alone (port 0: not dialed until an address comes)."""
        return cls(PeerAddress("unknown", 0, peer))


@dataclass
class _Conn:
    conn: int
    peer: NodeId
    outbound: bool
    dialer: NodeId
    since_s: float
    last_seen_s: float
    last_ping_s: float = -1.0


@dataclass(frozen=True)
class PeerTableStatistics:
    connected: int
    outbound: int
    inbound: int
    dialing: int
    known: int


@dataclass
class _Counters:
    refused: dict[str, int] = field(default_factory=dict)


class PeerTable:
    """The peer table core (see the module docstring)."""

    def __init__(self, me: NodeId, rng: random.Random, config: PeerTableConfig) -> None:
        self.me = me
        self.rng = rng
        self.config = config
        self.known: dict[NodeId, _Dialable] = {}
        self.seeds: dict[tuple[str, int], _Dialable] = {}
        self.conns: dict[int, _Conn] = {}
        self.by_peer: dict[NodeId, int] = {}
        self.counters = _Counters()
        self._dialing: dict[int, _Dialable] = {}  # by id(): insertion-ordered, so deterministic
        self._outbound = 0
        self._last_ask_s = -1e9
        self.banned: dict[NodeId, float] = {}  # peer -> until (the core's clock)
        self.kept: frozenset[NodeId] = frozenset()  # connections needed now (Keep)
        self.preferred: frozenset[NodeId] = frozenset()  # linked first (Prefer)
        self.released: dict[NodeId, float] = {}  # once kept, linked, no longer: since when
        for seed in config.seeds:
            if seed.peer is None:
                self.seeds[(seed.host, seed.port)] = _Dialable(seed)
            elif seed.peer != me:
                self.known[seed.peer] = _Dialable(seed)

    # ------------------------------------------------------------ queries

    def connected(self) -> list[NodeId]:
        return sorted(self.by_peer)

    def statistics(self) -> PeerTableStatistics:
        live = [self.conns[c] for c in self.by_peer.values()]
        outbound = sum(1 for c in live if c.outbound)
        dialing = len(self._dialing)
        return PeerTableStatistics(
            len(live), outbound, len(live) - outbound, dialing, len(self.known)
        )

    def observe(self, peer: NodeId, now: float) -> None:
        """A message from ``peer`` arrived: its connection is alive."""
        conn = self.by_peer.get(peer)
        if conn is not None:
            self.conns[conn].last_seen_s = now

    # ------------------------------------------------------------ the core

    def handle(self, event: Input, now: float) -> list[Effect]:
        match event:
            case Start():
                return [SetTimer(TICK, self.rng.uniform(0, self.config.tick_s)), *self._dial(now)]
            case Request(Connected() as connected):
                return self._connected(connected, now)
            case Request(Disconnected(conn, reason)):
                return self._drop(conn, now, reason) if conn in self.conns else []
            case Request(Learn(addresses)):
                self._learn_addresses(addresses)
                return self._dial(now)
            case Request(Keep(peers)):
                self._keep(frozenset(peers) - {self.me}, now)
                return self._dial(now)
            case Request(Prefer(peers)):
                self.preferred = frozenset(peers) - {self.me}
                return self._dial(now)
            case Request(BanPeer(peer, duration_s, reason)):
                return self._ban(peer, now + duration_s, reason, now)
            case Request(DialFailed(address, reason)):
                self._dial_failed(address, now)
                return [Log("dial failed", "debug", {"address": str(address), "reason": reason})]
            case Receive(sender, message):
                self.observe(sender, now)
                return self._receive(sender, message, now)
            case TimerFired(tag) if tag == TICK:
                return [SetTimer(TICK, self.config.tick_s), *self._tick(now)]
            case _:
                return []

    def _receive(self, sender: NodeId, message: Message, now: float) -> list[Effect]:
        if sender not in self.by_peer:
            return []
        match message:
            case Ping(nonce):
                return [Send(sender, Pong(nonce))]
            case PeerExchange(listen, peers, reply):
                self._learn(sender, listen, peers)
                effects: list[Effect] = [Send(sender, self._exchange())] if reply else []
                return effects + self._dial(now)
            case _:
                return []

    # ------------------------------------------------------------ connections

    def _connected(self, event: Connected, now: float) -> list[Effect]:
        if event.conn in self.conns:
            raise LocalProtocolError(f"connection id {event.conn} reported twice")
        peer = event.peer
        expected = event.address.peer if event.address is not None else None
        known = self.known.get(peer)
        reason = None
        if peer == self.me:
            reason = "connected to itself"
        elif self.banned.get(peer, -1.0) > now:
            reason = "banned"
        elif expected is not None and expected != peer:
            reason = f"dialed {expected[:16]} but reached {peer[:16]}"
        elif known is not None and known.key is not None and known.key != event.key:
            reason = "known peer presented a different key"
        if event.address is not None:
            self._dial_done(event.address, failed=reason is not None, now=now)
            seed = self.seeds.get((event.address.host, event.address.port))
            if seed is not None and reason is None:
                seed.resolved = peer
        if reason is not None:
            return self._refuse(event.conn, reason)
        dialer = self.me if event.outbound else peer
        new = _Conn(event.conn, peer, event.outbound, dialer, now, now)
        old_id = self.by_peer.get(peer)
        effects: list[Effect] = []
        if old_id is not None:
            old = self.conns[old_id]
            if old.dialer != dialer and old.dialer == min(self.me, peer):
                return self._refuse(event.conn, "duplicate connection", count=False)
            effects += self._drop(old_id, now, "replaced by a newer connection", replaced=True)
        elif self._full(event.outbound, peer):
            evicted = self._room_for_preferred(peer)
            if evicted is None:
                # Full: tell the peer whom else to try (on this connection), then close it.
                # The peer is known from now: a full mesh that refuses a joiner learns it has
                # outgrown itself and sheds to its targets (room for the joiner).
                if known is None and len(self.known) < self.config.known_max:
                    self.known[peer] = _Dialable.unaddressed(peer)
                return [Send(peer, self._exchange()), *self._refuse(event.conn, "connection limit")]
            effects += self._drop(evicted, now, "room for a preferred peer", close=True)
        if known is None:
            known = self.known[peer] = _Dialable.unaddressed(peer)
        known.key = event.key
        self.conns[event.conn] = new
        self.by_peer[peer] = event.conn
        self._outbound += event.outbound
        return [
            *effects,
            Deliver(PeerUp(peer, event.outbound)),
            Send(peer, self._exchange()),
            Metric("p2p.peers.connected", 1),
        ]

    def _ban(self, peer: NodeId, until: float, reason: str, now: float) -> list[Effect]:
        self.banned[peer] = max(until, self.banned.get(peer, until))
        effects: list[Effect] = [Log("peer banned", "warning", {"peer": peer, "reason": reason})]
        conn = self.by_peer.get(peer)
        if conn is not None:
            effects += self._drop(conn, now, f"banned: {reason}", close=True)
        return effects

    def _refuse(self, conn: int, reason: str, *, count: bool = True) -> list[Effect]:
        if count:
            self.counters.refused[reason] = self.counters.refused.get(reason, 0) + 1
        level = "warning" if count else "debug"
        return [Deliver(Close(conn, reason)), Log("connection refused", level, {"reason": reason})]

    def _drop(
        self,
        conn: int,
        now: float,
        reason: str,
        *,
        close: bool = False,
        replaced: bool = False,
        backoff: bool = True,
    ) -> list[Effect]:
        """Forget ``conn`` (closing it if asked or replaced): its peer is down and backs off
        (unless ``backoff`` is false: the table closed it for no fault of the peer)."""
        record = self.conns.pop(conn)
        close = close or replaced
        effects: list[Effect] = [Deliver(Close(conn, reason))] if close else []
        if self.by_peer.get(record.peer) != conn:
            return effects
        del self.by_peer[record.peer]
        self._outbound -= record.outbound
        known = self.known.get(record.peer)
        if known is not None and not replaced and backoff:
            young = now - record.since_s < self.config.ping_timeout_s
            known.failures = known.failures + 1 if young else 0
            known.next_dial_s = now + (self._backoff_s(known.failures) if young else 0.0)
        if not replaced:
            self.released.pop(record.peer, None)
        effects += [Deliver(PeerDown(record.peer)), Metric("p2p.peers.connected", -1)]
        effects.append(Log("peer down", "debug", {"peer": record.peer, "reason": reason}))
        return effects

    def _outbound_count(self) -> int:
        return self._outbound

    def _full(self, outbound: bool, peer: NodeId) -> bool:
        """Inbound connections leave room for ``outbound_target`` outbound ones within
        ``links_max`` (a kept peer's need only ``connections_max``)."""
        config = self.config
        if outbound or peer in self.kept:
            return len(self.by_peer) >= config.connections_max
        ordinary = sum(1 for linked in self.by_peer if linked not in self.kept)
        inbound = len(self.by_peer) - self._outbound
        return ordinary >= config.links or inbound >= self._inbound_cap()

    def _room_for_preferred(self, peer: NodeId) -> int | None:
        """A preferred peer finding the links full takes the place of the newest ordinary
        inbound link to a peer not preferred, while more than ``PREFER_RESERVE`` such links
        remain (so that a validator stays linked to followers, whom its blocks must reach)."""
        if peer not in self.preferred:
            return None
        exempt = self.preferred | self.kept
        others = [c for c in self.conns.values() if c.peer not in exempt]
        inbound = [c for c in others if not c.outbound]
        if len(others) <= PREFER_RESERVE or not inbound:
            return None
        return max(inbound, key=lambda c: (c.since_s, c.peer)).conn

    def _small(self) -> bool:
        """Few enough peers known for a full mesh within ``links_max``."""
        return len(self.known) <= min(self.config.full_mesh_max, self.config.links)

    def _outbound_goal(self) -> int:
        target = self.config.outbound_target
        return max(target, len(self.known)) if self._small() else target

    def _inbound_cap(self) -> int:
        """Inbound links not kept, at most (a small swarm: whatever ``links_max`` leaves)."""
        if self._small():
            return self.config.links - self._outbound
        return self.config.inbound_max

    # ------------------------------------------------------------ kept and released links

    def _keep(self, kept: frozenset[NodeId], now: float) -> None:
        """``kept`` replaces the kept set; the peers it drops are released from now."""
        for peer in sorted(self.kept - kept):
            self.released[peer] = now
        for peer in kept:
            self.released.pop(peer, None)
        self.kept = kept

    def _prune(self, now: float) -> list[Effect]:
        """Close released links past their grace while the table holds more than its
        targets (oldest release first); those the targets need stay."""
        config = self.config
        surplus_out = self._outbound - self._outbound_goal()
        inbound = len(self.by_peer) - self._outbound
        surplus_in = inbound - self._inbound_cap()
        effects: list[Effect] = []
        for peer, since in sorted(self.released.items(), key=lambda item: (item[1], item[0])):
            if now - since < config.release_grace_s:
                break
            if peer not in self.by_peer:
                known = self.known.get(peer)
                if known is None or known.dialing_since is None:
                    del self.released[peer]  # neither linked nor being dialed: nothing to close
                continue
            conn = self.conns[self.by_peer[peer]]
            if conn.outbound and surplus_out > 0:
                surplus_out -= 1
            elif not conn.outbound and surplus_in > 0:
                surplus_in -= 1
            else:
                del self.released[peer]  # the targets need it: an ordinary link from now
                continue
            reason = "no longer kept"
            effects += self._drop(conn.conn, now, reason, close=True, backoff=False)
            effects.append(Metric("p2p.peers.released", 1))
        if not self._small():
            effects += self._shed(now)
        return effects

    def _shed(self, now: float) -> list[Effect]:
        """A swarm that outgrew the full mesh: ordinary links beyond the targets (dialed or
        accepted while it was small) are closed, newest first, so that joiners find room."""
        config = self.config
        held = self.kept | self.released.keys()
        ordinary = [c for c in self.conns.values() if c.peer not in held]
        effects: list[Effect] = []
        for outbound, cap in ((True, config.outbound_target), (False, config.inbound_max)):
            side = sorted(  # preferred peers kept first, then the oldest links
                (c for c in ordinary if c.outbound == outbound),
                key=lambda c: (c.peer not in self.preferred, c.since_s, c.peer),
            )
            for conn in side[cap:]:
                reason = "beyond the targets"
                effects += self._drop(conn.conn, now, reason, close=True, backoff=False)
                effects.append(Metric("p2p.peers.shed", 1))
        return effects

    # ------------------------------------------------------------ dialing

    def _find(self, address: PeerAddress) -> _Dialable | None:
        if address.peer is not None and address.peer in self.known:
            return self.known[address.peer]
        return self.seeds.get((address.host, address.port))

    def _dial_done(self, address: PeerAddress, *, failed: bool, now: float) -> None:
        entry = self._find(address)
        if entry is None:
            return
        entry.dialing_since = None
        self._dialing.pop(id(entry), None)
        if failed:
            entry.failures += 1
            entry.next_dial_s = now + self._backoff_s(entry.failures)

    def _dial_failed(self, address: PeerAddress, now: float) -> None:
        self._dial_done(address, failed=True, now=now)

    def _backoff_s(self, failures: int) -> float:
        config = self.config
        delay = config.backoff_min_s * 2.0 ** max(0, failures - 1) * self.rng.uniform(1.0, 1.25)
        return min(config.backoff_max_s, delay)

    def _dial(self, now: float) -> list[Effect]:
        """Dial due candidates until the outbound target is covered (seeds when alone), and
        the kept peers not connected."""
        room = self._outbound_goal() - self._outbound - len(self._dialing)
        chosen: list[_Dialable] = []
        if room > 0:
            due = sorted(peer for peer, entry in self.known.items() if self._due(peer, entry, now))
            first = [p for p in due if p in self.preferred]
            picked = self.rng.sample(first, min(room, len(first)))
            rest = [p for p in due if p not in self.preferred]
            picked += self.rng.sample(rest, min(room - len(picked), len(rest)))
            chosen = [self.known[p] for p in picked]
            if not self.by_peer or not chosen:
                seeds = [self.seeds[key] for key in sorted(self.seeds)]
                chosen = [s for s in seeds if self._seed_due(s, now)] + chosen
            chosen = chosen[:room]
        if self.kept:
            chosen += self._kept_due(now, exclude=chosen)
        effects: list[Effect] = []
        for entry in chosen:
            entry.dialing_since = now
            self._dialing[id(entry)] = entry
            effects.append(Deliver(Dial(entry.address)))
        return effects

    def _kept_due(self, now: float, exclude: list[_Dialable]) -> list[_Dialable]:
        """Kept peers to dial now, beyond the target, while connections stay in bounds."""
        room = self.config.connections_max - len(self.by_peer) - len(self._dialing) - len(exclude)
        due = [
            self.known[peer]
            for peer in sorted(self.kept)
            if peer in self.known and self._due(peer, self.known[peer], now)
        ]
        return [entry for entry in due if all(entry is not e for e in exclude)][: max(room, 0)]

    def _seed_due(self, seed: _Dialable, now: float) -> bool:
        if seed.dialing_since is not None or seed.next_dial_s > now:
            return False
        peer = seed.resolved
        if peer is None:
            return True
        known = self.known.get(peer)  # the peer it turned out to be: its backoff holds here too
        busy = known is not None and (known.dialing_since is not None or known.next_dial_s > now)
        return peer not in self.by_peer and not busy and self.banned.get(peer, -1.0) <= now

    def _due(self, peer: NodeId, entry: _Dialable, now: float) -> bool:
        return (
            peer not in self.by_peer
            and entry.dialing_since is None
            and entry.next_dial_s <= now
            and entry.address.port != 0
            and self.banned.get(peer, -1.0) <= now
        )

    # ------------------------------------------------------------ peer exchange

    def _exchange(self, reply: bool = False) -> PeerExchange:
        """Our listen addresses and a sample of known ones, connected peers first."""
        listen = tuple(str(address.with_peer(self.me)) for address in self.config.listen)
        limit = self.config.pex_max
        live = [p for p in sorted(self.by_peer) if self.known[p].address.port != 0]
        sample = self.rng.sample(live, min(limit, len(live)))
        if len(sample) < limit:
            rest = sorted(
                p for p, e in self.known.items() if e.address.port != 0 and p not in self.by_peer
            )
            sample += self.rng.sample(rest, min(limit - len(sample), len(rest)))
        peers = tuple(str(self.known[p].address) for p in sorted(sample))
        return PeerExchange(listen, peers, reply)

    def _learn_addresses(self, addresses: tuple[PeerAddress, ...]) -> None:
        for address in addresses:
            peer = address.peer
            if peer is None or peer == self.me:
                continue
            entry = self.known.get(peer)
            if entry is None and len(self.known) < self.config.known_max:
                self.known[peer] = _Dialable(address)
            elif entry is not None and entry.address != address:
                entry.address = address  # the ledger's record is the peer's own word

    def _learn(self, sender: NodeId, listen: tuple[str, ...], peers: tuple[str, ...]) -> None:
        limit = self.config.pex_max
        for text in listen[:limit]:
            address = try_parse_address(text)
            if address is not None and address.peer in (sender, None):
                entry = self.known.setdefault(sender, _Dialable(address))
                entry.address = address.with_peer(sender)
        for text in peers[: 2 * limit]:
            address = try_parse_address(text)
            if address is None or address.peer is None or address.peer == self.me:
                continue
            known = self.known.get(address.peer)
            if known is None and len(self.known) < self.config.known_max:
                self.known[address.peer] = _Dialable(address)
            elif known is not None and known.address.port == 0:
                known.address = address  # a peer known without an address (it dialed us)

    # ------------------------------------------------------------ the tick

    def _tick(self, now: float) -> list[Effect]:
        config = self.config
        effects: list[Effect] = []
        self.banned = {peer: until for peer, until in self.banned.items() if until > now}
        for conn_id in sorted(self.conns):
            conn = self.conns[conn_id]
            silent_s = now - conn.last_seen_s
            if silent_s > config.ping_timeout_s:
                effects += self._drop(conn_id, now, "ping timeout", close=True)
            elif (
                silent_s >= config.ping_interval_s
                and now - conn.last_ping_s >= config.ping_interval_s
            ):
                conn.last_ping_s = now
                effects.append(Send(conn.peer, Ping(self.rng.getrandbits(63))))
        effects += self._prune(now)
        for entry in list(self._dialing.values()):
            since = entry.dialing_since
            if since is not None and now - since > config.dial_timeout_s:
                self._dial_failed(entry.address, now)
        effects += self._dial(now)
        short = self._outbound_count() < config.outbound_target
        if short and self.by_peer and now - self._last_ask_s >= config.ping_interval_s:
            self._last_ask_s = now
            peer = self.rng.choice(sorted(self.by_peer))
            effects.append(Send(peer, self._exchange(reply=True)))
        return effects
