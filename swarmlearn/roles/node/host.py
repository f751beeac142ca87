"""A swarm node's one p2p host: peers, gossip, node-API clients and bans on one port.

Theory of operation
-------------------
:class:`NodeHost` is the p2p host (:class:`~swarmlearn.p2p.service.P2PService`: listener,
dialer, one mutual-TLS link per peer carrying a mux, the peer table and gossip, the peer
store in the data directory) with what a swarm node adds. It runs the node's whole core
(:meth:`~swarmlearn.p2p.service.P2PService.drive`: the SL rounds around the ledger over
gossip around the host's ``P2PNode``) under the one driver, so there is one peer table and
one connection per pair of nodes; nobody dials every member.

Who connects on the node's port (30303), told apart by the first byte:

- **peers** (``M``, a link): nodes whose certificate grants a node role (sn, sl, swop).
  :meth:`admit` is the one check: the roles, then the :class:`~.policing.Police`'s bans
  (a banned peer gets one ``Goodbye`` saying for how long, and is closed). The peer table
  is seeded with the ``--bootstrap`` address, the peers file, and the addresses the ledger
  records for its members (:meth:`learn`); from there peer exchange and gossip do the rest.
- **one-shot clients** (TLS's first byte: ``swarmlearn ping``, ``swarmlearn ledger``,
  SWCI, a joiner fetching the genesis or asking for a seat): a request loop
  (:meth:`_serve_client`) answers node-API requests through ``on_request``, with the
  transport's limits (a :class:`~swarmlearn.p2p.transport.Listener`: connections and
  handshakes at once, frame sizes and deadlines), ``CLIENT_CONNECTIONS_MAX`` connections per
  certificate, ``REQUEST_IDLE_S`` of silence and ``REQUEST_S`` per request.
- **bulk lanes** (``B``): the p2p host's blob lanes.
- **round lanes** (``R``): a sync round's weights (:meth:`_take_round_lane`), when the node
  has no lane port of its own (``--lane-port none``) or a peer dials this port anyway.

Round weights (messages of ``lane_types``) go to the round lanes
(:mod:`swarmlearn.p2p.bulk_push`) when the peer has one; otherwise, and for everything
else, on the peer's link. Each new peer is told this node's lane port (a direct
:class:`~swarmlearn.p2p.bulk_push.LanePort` on the link: the lanes' own port, or this
host's advertised one); a peer's announcement is kept from the core and given to the lanes.

A sync round's participants need links with each other (their small round messages and
the lane-port announcement go on links): :meth:`keep` names them, the peer table dials
them beyond its outbound target (:class:`~swarmlearn.p2p.peertable.Keep`), and what is sent
to a kept peer before its link is up waits (up to ``PENDING_BYTES_MAX``) until the peer's
lane port arrives on the new link, then goes the usual way.

A peer that keeps sending forged transactions (:meth:`report_forged`: the consensus core's
``ForgedTx``, gossip's rejected transactions, the SL core's ``PeerFault``) is banned by the
police; the ban goes to the peer table as :class:`~swarmlearn.p2p.peertable.BanPeer`,
which closes its link and does not dial it until the ban ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping

import trio

from swarmlearn.errors import RemoteProtocolError
from swarmlearn.p2p.bulk_push import LANE_ROUND, LanePort, RoundLanes
from swarmlearn.p2p.identity import NODE_ROLES, Identity
from swarmlearn.p2p.limits import ByteBudget
from swarmlearn.p2p.messages import Goodbye
from swarmlearn.p2p.multiaddr import PeerAddress
from swarmlearn.p2p.peertable import BanPeer, Keep, Learn, PeerDown, PeerUp
from swarmlearn.p2p.service import P2PService, ServiceConfig
from swarmlearn.p2p.transport import Connection, Listener, TransportStatistics
from swarmlearn.p2p.wire import Message, payload_of
from swarmlearn.roles.node.policing import Police
from swarmlearn.sansio import NodeId, Request

log = logging.getLogger(__name__)

REFUSE_SEND_S = 1.0  # the most a refused (banned) client's connection waits for its Goodbye
REQUEST_IDLE_S = 300.0  # silence before a client's connection is closed
CLIENT_CONNECTIONS_MAX = 8  # one certificate's client connections at once
REQUEST_S = 180.0  # the most one request (a submit waits up to 120 s) holds its connection
PENDING_BYTES_MAX = 64 * 1024 * 1024  # held for one kept peer until its link is up
CONNECTION_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, RemoteProtocolError)

RequestHandler = Callable[[Connection, Message], Awaitable[bool]]


class NodeHost(P2PService):
    """A swarm node's p2p host (see the module docstring)."""

    def __init__(
        self,
        identity: Identity,
        config: ServiceConfig,
        on_request: RequestHandler,
        lanes: RoundLanes,
        lane_types: tuple[type[Message], ...],
        police: Police | None = None,
    ) -> None:
        super().__init__(identity, dataclasses.replace(config, peer_roles=NODE_ROLES))
        self.on_request = on_request
        self.lanes = lanes
        self.lane_types = lane_types
        self.police = police or Police()
        self.clients = Listener(identity, self.config.transport, budget=self._budget)
        self.requests_ignored = 0  # client messages that are no request
        self._open_by: dict[NodeId, int] = {}  # client connections of each certificate
        self._learnt: tuple[PeerAddress, ...] = ()
        self.kept: frozenset[NodeId] = frozenset()
        self._pending: dict[NodeId, deque[Message]] = {}
        self._pending_bytes: dict[NodeId, int] = {}
        self.pending_dropped = 0  # held for a kept peer, lost (too many, or no longer kept)
        self.lane_takers[LANE_ROUND] = self._take_round_lane

    # ------------------------------------------------------------ peers

    def admit(self, connection: Connection) -> str:
        reason = super().admit(connection)
        return reason or self._ban_reason(str(connection.peer_id))

    def _ban_reason(self, peer: NodeId) -> str:
        now = trio.current_time()
        if not self.police.refuse(peer, now):
            return ""
        return f"banned for {self.police.banned_s(peer, now):.0f} s: forged transactions"

    def learn(self, members: Mapping[NodeId, tuple[str, int]]) -> None:
        """The members' recorded addresses: peer-table seeds, and where their lanes are."""
        addresses = tuple(
            PeerAddress(host, port, peer) for peer, (host, port) in sorted(members.items())
        )
        for peer, (host, _) in members.items():
            self.lanes.set_host(peer, host)
        self.lanes.open(sorted(self.kept & members.keys()))  # a lane address just completed
        if addresses != self._learnt:
            self._learnt = addresses
            self._input(Request(Learn(addresses)))

    def keep(self, peers: Iterable[NodeId]) -> None:
        """Hold links with ``peers`` now (a sync round's participants; replaces the last)."""
        kept = frozenset(peers) - {self.me}
        if kept == self.kept:
            return
        added, self.kept = kept - self.kept, kept
        for peer in [p for p in self._pending if p not in kept]:
            self.pending_dropped += len(self._pending.pop(peer))
            del self._pending_bytes[peer]
        self._input(Request(Keep(tuple(sorted(kept)))))
        self.lanes.open(sorted(added))  # those whose lane address is known; the rest at LanePort

    def report_forged(self, peer: NodeId, reason: str) -> None:
        """``peer`` sent a forged transaction: count it; enough of them, and it is banned."""
        ban = self.police.forged(peer, reason, trio.current_time())
        if ban is None:
            return
        log.warning(
            "peer %s banned for %g s, its connection closed: %s",
            peer[:8],
            ban.duration_s,
            ban.reason,
        )
        self._input(Request(BanPeer(peer, ban.duration_s, ban.reason)))

    def peer_event(self, value: PeerUp | PeerDown) -> None:
        if isinstance(value, PeerUp):
            self.send_direct(value.peer, LanePort(self.lane_port()))

    def lane_port(self) -> int:
        """Where peers dial this node's round lanes: their own port, or this host's."""
        if self.lanes.port or self.address is None:
            return self.lanes.port
        return self.address.port

    def _take_round_lane(self, stream: trio.SocketStream) -> None:
        """A round lane on the host's port (its first byte read): to the lanes' threads."""
        raw = socket.socket(fileno=stream.socket.detach())
        raw.setblocking(True)
        if not self.lanes.take(raw):
            raw.close()

    def take(self, peer: str, message: Message) -> bool:
        if isinstance(message, LanePort):
            self.lanes.set_port(peer, message.port)
            self._flush(peer)
            if peer in self.kept:
                self.lanes.open([peer])  # a round's participant: its lane before its chunks
            return True
        return False

    # ------------------------------------------------------------ sending

    def send(self, peer: NodeId, message: Message) -> None:
        if isinstance(message, self.lane_types) and self.lanes.send(peer, message):
            return
        self.send_direct(peer, message)

    def send_direct(self, peer: NodeId, message: Message) -> None:
        """On the peer's link, whatever the message (a round lane's fallback); for a kept
        peer whose link is not up yet, held until it is."""
        if peer in self.kept and self._link_for(peer) is None:
            self._hold(peer, message)
            return
        super().send(peer, message)

    def _hold(self, peer: NodeId, message: Message) -> None:
        size = len(payload_of(message)) + 64
        held = self._pending_bytes.get(peer, 0)
        if held + size > PENDING_BYTES_MAX:
            self.pending_dropped += 1
            return
        self._pending.setdefault(peer, deque()).append(message)
        self._pending_bytes[peer] = held + size

    def _flush(self, peer: NodeId) -> None:
        """The peer's link is up and its lane port known: what waited goes the usual way."""
        waiting = self._pending.pop(peer, None)
        self._pending_bytes.pop(peer, None)
        for message in waiting or ():
            self.send(peer, message)

    def priority(self, message: Message) -> int:
        return 1 if isinstance(message, self.lane_types) else super().priority(message)

    # ------------------------------------------------------------ one-shot clients

    async def serve_client(self, tcp: trio.SocketStream, first: bytes) -> None:
        await self.clients.serve_stream(tcp, self._serve_client)

    async def _serve_client(self, connection: Connection) -> None:
        peer = str(connection.peer_id)
        reason = self._ban_reason(peer)
        if reason:
            log.debug("refused a client connection of %s: banned", peer[:8])
            with trio.move_on_after(REFUSE_SEND_S):
                with contextlib.suppress(*CONNECTION_ERRORS):
                    await connection.send(Goodbye(reason))
            return
        if self._open_by.get(peer, 0) >= CLIENT_CONNECTIONS_MAX:
            connection.count_refused()
            log.info("refused a connection of %s: %d open", peer[:8], CLIENT_CONNECTIONS_MAX)
            return
        self._open_by[peer] = self._open_by.get(peer, 0) + 1
        try:
            await self._answer(connection)
        finally:
            self._open_by[peer] -= 1
            if not self._open_by[peer]:
                del self._open_by[peer]

    async def _answer(self, connection: Connection) -> None:
        try:
            while (message := await self._next_request(connection)) is not None:
                with trio.fail_after(REQUEST_S):  # a reply the client does not read, too
                    if not await self.on_request(connection, message):
                        self.requests_ignored += 1
        except (*CONNECTION_ERRORS, trio.TooSlowError) as error:
            log.info("client %s ended: %s", connection.peer_id.short, error or "timed out")

    async def _next_request(self, connection: Connection) -> Message | None:
        """The next message (None: the connection ended, or idle past ``REQUEST_IDLE_S``)."""
        try:
            with trio.fail_after(REQUEST_IDLE_S):
                return await connection.receive()
        except trio.EndOfChannel:
            return None
        except trio.TooSlowError:
            connection.count_idle()
            log.info("closed %s's connection: idle %g s", connection.peer_id.short, REQUEST_IDLE_S)
            return None

    # ------------------------------------------------------------ statistics

    @property
    def budget(self) -> ByteBudget:
        """Bytes of partial frames held beyond the connections' reserves (links and clients)."""
        return self._budget

    def traffic(self) -> TransportStatistics:
        """Traffic of every connection on the port: links (both ways) and clients."""
        clients, links = self.clients.statistics(), self._transport_counters.snapshot()
        fields = {
            name: getattr(clients, name) + getattr(links, name)
            for name in TransportStatistics.__dataclass_fields__
            if name != "last_error"
        }
        return TransportStatistics(**fields, last_error=clients.last_error or links.last_error)


def member_addresses(members: Mapping[NodeId, str]) -> dict[NodeId, tuple[str, int]]:
    """``host:port`` texts (as the ledger records them) parsed; others left out."""
    found: dict[NodeId, tuple[str, int]] = {}
    for peer, text in members.items():
        host, _, port = text.rpartition(":")
        if host and port.isdigit():
            found[peer] = (host.strip("[]"), int(port))
    return found
