"""Connections over the simulated network, for p2p cores (peer table, gossip, the ledger).

The simulator delivers messages between any two nodes; real nodes talk only over connections
they dialed or accepted. :class:`SimConnections` wraps a node's core and plays the trio
driver's part: a ``Deliver(Dial)`` becomes a :class:`SimHello` to the addressed node, whose
:class:`SimWelcome` completes the "handshake" (both sides then get ``Connected``); a
``Deliver(Close)`` becomes a :class:`SimBye`. Messages to or from a peer without a live
connection are dropped, as a real node would have no socket to carry them; a ``Broadcast``
goes to the live connections. Handshake messages go over the same lossy, partitionable links
as everything else, so a partition stops dials and a lost hello is a dial that times out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from swarmlearn.p2p.multiaddr import PeerAddress
from swarmlearn.p2p.peertable import Close, Connected, Dial, DialFailed, Disconnected
from swarmlearn.p2p.wire import Message
from swarmlearn.sansio import (
    Broadcast,
    Core,
    Deliver,
    Effect,
    Input,
    NodeId,
    Receive,
    Request,
    Send,
)

PORT = 30303


@dataclass(frozen=True)
class SimHello(Message, tag=0xD8):
    link: int  # the dialer's counter: (dialer, link) names the connection on both sides
    key: bytes


@dataclass(frozen=True)
class SimWelcome(Message, tag=0xD9):
    link: int
    key: bytes


@dataclass(frozen=True)
class SimBye(Message, tag=0xDA):
    dialer: str
    link: int


def address_of(node: NodeId) -> PeerAddress:
    return PeerAddress(node, PORT, node)


@dataclass
class ShimCounters:
    dropped_unconnected: int = 0


class SimConnections:
    """Wraps a p2p core; turns dial/close commands into handshake messages (see module doc)."""

    def __init__(self, me: NodeId, inner: Core, nodes: Sequence[NodeId]) -> None:
        self.me = me
        self.inner = inner
        self.key = b"key:" + me.encode()
        self.nodes = frozenset(nodes)
        self.next_link = 0
        self.next_conn = 0
        self.pending: dict[int, PeerAddress] = {}
        self.live: dict[int, tuple[NodeId, tuple[NodeId, int]]] = {}  # conn -> (peer, link)
        self.by_link: dict[tuple[NodeId, int], int] = {}
        self.links_to: dict[NodeId, int] = {}
        self.counters = ShimCounters()

    def connected_to(self, peer: NodeId) -> bool:
        return self.links_to.get(peer, 0) > 0

    def _close(self, conn: int) -> tuple[NodeId, tuple[NodeId, int]] | None:
        found = self.live.pop(conn, None)
        if found is not None:
            self.by_link.pop(found[1], None)
            self.links_to[found[0]] -= 1
        return found

    def handle(self, event: Input, now: float) -> list[Effect]:
        match event:
            case Receive(sender, SimHello(link, key)):
                conn = self._open(sender, (sender, link))
                hello: list[Effect] = [Send(sender, SimWelcome(link, self.key))]
                return hello + self._inner(Request(Connected(conn, sender, key, False)), now)
            case Receive(sender, SimWelcome(link, key)):
                address = self.pending.pop(link, None)
                conn = self._open(sender, (self.me, link))
                return self._inner(Request(Connected(conn, sender, key, True, address)), now)
            case Receive(sender, SimBye(dialer, link)):
                found = self.by_link.get((dialer, link))
                if found is None or self._close(found) is None:
                    return []
                return self._inner(Request(Disconnected(found, "closed by peer")), now)
            case Receive(sender, _) if not self.connected_to(sender):
                self.counters.dropped_unconnected += 1
                return []
        return self._inner(event, now)

    def _open(self, peer: NodeId, link: tuple[NodeId, int]) -> int:
        self.next_conn += 1
        self.live[self.next_conn] = (peer, link)
        self.by_link[link] = self.next_conn
        self.links_to[peer] = self.links_to.get(peer, 0) + 1
        return self.next_conn

    def _inner(self, event: Input, now: float) -> list[Effect]:
        out: list[Effect] = []
        for effect in self.inner.handle(event, now):
            match effect:
                case Deliver(Dial(address)):
                    out += self._dial(address, now)
                case Deliver(Close(conn, _)):
                    found = self._close(conn)
                    if found is not None:
                        out.append(Send(found[0], SimBye(*found[1])))
                case Send(to, _) if not self.connected_to(to):
                    self.counters.dropped_unconnected += 1
                case Broadcast(message, peers):
                    targets = sorted({p for p, _ in self.live.values()})
                    chosen = [p for p in targets if peers is None or p in peers]
                    out += [Send(p, message) for p in chosen]
                case _:
                    out.append(effect)
        return out

    def _dial(self, address: PeerAddress, now: float) -> list[Effect]:
        if address.host not in self.nodes or address.host == self.me:
            return self._inner(Request(DialFailed(address, "no such host")), now)
        self.next_link += 1
        self.pending[self.next_link] = address
        return [Send(address.host, SimHello(self.next_link, self.key))]
