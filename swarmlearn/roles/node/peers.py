"""Connections to the other nodes (trio): listen, dial known addresses, queue and dispatch.

Theory of operation
-------------------
Every connection is mutual TLS; the peer's id and roles come from its certificate. A
connection from a node that runs a swarm-node (a certificate with the sn, sl or swop role:
validators, and the SL/SWOP-only members that follow their ledger) is a *peer*: it gets its
own bounded send queue, drained by a writer task, and what it sends goes to
``on_peer_message`` (the consensus driver: a node without a seat catches up on blocks and
follows the proposals and votes from there). Anything may also send node-API requests,
which go to ``on_request`` with the connection to answer on. Known addresses (those the
ledger records for its members) are dialed, re-dialed with capped exponential backoff,
and never dialed twice at once. A full send queue drops the message (the protocols repair
loss); a broken connection ends only its own tasks. The gossip layer of the p2p issue will
replace this full mesh.

With ``lanes`` (:mod:`swarmlearn.roles.node.lanes`), messages of ``lane_types`` (a sync round's
weights) go to the peer's round lane instead, and each new peer connection first announces
this node's lane port (:class:`~swarmlearn.roles.node.lanes.LanePort`); a peer without a lane
(not announced yet, or its lane failed) gets them here, with ``send_direct``.

Only a member (a certificate with a node role) gets consensus traffic: anything else gets
its requests answered and nothing else. One certificate may hold ``PEER_CONNECTIONS_MAX``
connections at once (more are closed, counted in ``connections_refused``), and a connection
of one that sends nothing for
``REQUEST_IDLE_S`` is closed (counted in ``idle_timeouts``). Writes have deadlines too: a
request and its reply within ``REQUEST_S``, a queued message within ``SEND_TIMEOUT_S`` plus
a second per ``SEND_RATE_MIN_BYTES_S``; past them the connection is closed. What any
connection may make the node hold (frame sizes by type, bytes in flight, deadlines,
connection and handshake caps) is the transport's (:mod:`swarmlearn.p2p.transport`,
:mod:`swarmlearn.p2p.limits`); an undecodable frame closes its connection and is counted
there.

A peer that keeps sending forged transactions (:meth:`PeerNetwork.report_forged`, from the
consensus core's ``ForgedTx``) is banned by the :class:`~swarmlearn.roles.node.policing.Police`:
its connections are closed, new ones refused and it is not dialed until the ban ends.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from swarmlearn.errors import RemoteProtocolError
from swarmlearn.p2p.bulk_push import LanePort, RoundLanes
from swarmlearn.p2p.identity import NODE_ROLES, Identity
from swarmlearn.p2p.messages import Goodbye
from swarmlearn.p2p.transport import (
    Connection,
    Listener,
    TransportConfig,
    TransportCounters,
    TransportStatistics,
    dial,
)
from swarmlearn.p2p.wire import Message, payload_of
from swarmlearn.roles.node.policing import Police
from swarmlearn.sansio import NodeId

log = logging.getLogger(__name__)

SEND_QUEUE_MAX = 4096
SEND_QUEUE_BYTES_MAX = 512 * 1024 * 1024
REDIAL_MIN_S = 0.2
REDIAL_MAX_S = 5.0
REFUSE_SEND_S = 1.0  # the most a refused (banned) peer's connection waits for its Goodbye
REQUEST_IDLE_S = 300.0  # silence before a non-member's connection (requests only) is closed
PEER_CONNECTIONS_MAX = 8  # connections of one certificate at once (a pair needs two)
REQUEST_S = 180.0  # the most one request (a submit waits up to 120 s) holds its connection
SEND_TIMEOUT_S = 30.0  # one message's write, plus a second per SEND_RATE_MIN_BYTES_S of it:
SEND_RATE_MIN_BYTES_S = 1024 * 1024  # a peer that reads nothing for that long is cut off

CONNECTION_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, RemoteProtocolError)

PeerHandler = Callable[[NodeId, Message], None]
RequestHandler = Callable[[Connection, Message], Awaitable[bool]]


@dataclass
class _Peer:
    connection: Connection
    queue: trio.MemorySendChannel[Message]
    queued_bytes: int = 0  # payload bytes waiting in the queue (weight chunks are big)
    scope: trio.CancelScope | None = None  # cancelled: the connection ends


class PeerNetwork:
    def __init__(
        self,
        identity: Identity,
        on_peer_message: PeerHandler,
        on_request: RequestHandler,
        config: TransportConfig | None = None,
        on_peers_changed: Callable[[list[NodeId]], None] | None = None,
        lanes: RoundLanes | None = None,
        lane_types: tuple[type[Message], ...] = (),
        police: Police | None = None,
    ) -> None:
        self.identity = identity
        self.me = str(identity.peer_id)
        self.config = config or TransportConfig()
        self.on_peer_message = on_peer_message
        self.on_request = on_request
        self.on_peers_changed = on_peers_changed
        self.listener = Listener(identity, self.config)
        self.dialed = TransportCounters()  # the connections this node opened
        self._peers: dict[NodeId, list[_Peer]] = {}
        self._addresses: dict[NodeId, tuple[str, int]] = {}
        self._dialing: set[NodeId] = set()
        self._open_by: dict[NodeId, int] = {}  # connections of each certificate, both ways
        self._nursery: trio.Nursery | None = None
        self.dropped = 0
        self.lanes = lanes  # round data goes there when the peer has a lane (lanes.py)
        self.lane_types = lane_types
        self.police = police or Police()

    # ------------------------------------------------------------ the Outbox of the driver

    def send(self, peer: NodeId, message: Message) -> None:
        if (
            self.lanes is not None
            and isinstance(message, self.lane_types)
            and self.lanes.send(peer, message)
        ):
            return
        self.send_direct(peer, message)

    def send_direct(self, peer: NodeId, message: Message) -> None:
        """On the message connection, whatever the message (a lane's fallback)."""
        links = self._peers.get(peer)
        if not links:
            self.dropped += 1
            return
        link = links[-1]
        size = len(payload_of(message))
        if link.queued_bytes + size > SEND_QUEUE_BYTES_MAX:
            self.dropped += 1
            return
        try:
            link.queue.send_nowait(message)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self.dropped += 1
            return
        link.queued_bytes += size

    def statistics(self) -> TransportStatistics:
        """Traffic of every connection, accepted and dialed."""
        accepted, dialed = self.listener.statistics(), self.dialed.snapshot()
        fields = {
            name: getattr(accepted, name) + getattr(dialed, name)
            for name in TransportStatistics.__dataclass_fields__
            if name != "last_error"
        }
        return TransportStatistics(**fields, last_error=accepted.last_error or dialed.last_error)

    def peers(self) -> list[NodeId]:
        return sorted(peer for peer, links in self._peers.items() if links)

    # ------------------------------------------------------------ policing

    def report_forged(self, peer: NodeId, reason: str) -> None:
        """``peer`` sent a forged transaction: count it; enough of them, and it is banned."""
        ban = self.police.forged(peer, reason, trio.current_time())
        if ban is None:
            return
        log.warning(
            "peer %s banned for %g s, its connections closed: %s",
            peer[:8],
            ban.duration_s,
            ban.reason,
        )
        for link in self._peers.get(peer, ()):
            if link.scope is not None:
                link.scope.cancel()

    # ------------------------------------------------------------ running

    async def serve(
        self,
        host: str,
        port: int,
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            address = await nursery.start(self.listener.serve, self._run_connection, host, port)
            task_status.started(address)

    def add_address(self, peer: NodeId, host: str, port: int) -> None:
        """Keep a connection to ``peer`` at ``host:port`` (dialed now and after every loss)."""
        if peer == self.me or self._addresses.get(peer) == (host, port):
            return
        self._addresses[peer] = (host, port)
        if self.lanes is not None:
            self.lanes.set_host(peer, host)
        if self._nursery is not None and peer not in self._dialing:
            self._dialing.add(peer)
            self._nursery.start_soon(self._keep_dialing, peer)

    def known(self) -> set[NodeId]:
        """The peers this node keeps dialing."""
        return set(self._addresses)

    def forget(self, peer: NodeId) -> None:
        """Stop re-dialing ``peer`` (it left the swarm); a connection it has stays."""
        self._addresses.pop(peer, None)

    async def _keep_dialing(self, peer: NodeId) -> None:
        delay = REDIAL_MIN_S
        try:
            while peer in self._addresses:
                banned_s = self.police.banned_s(peer, trio.current_time())
                if banned_s > 0:
                    await trio.sleep(banned_s)
                    continue
                if not self._peers.get(peer):
                    host, port = self._addresses[peer]
                    try:
                        connection = await dial(
                            self.identity,
                            host,
                            port,
                            config=self.config,
                            counters=self.dialed,
                            budget=self.listener.budget,
                        )
                    except (OSError, RemoteProtocolError, trio.TooSlowError) as error:
                        log.debug("dial %s at %s:%d failed: %s", peer[:8], host, port, error)
                    else:
                        delay = REDIAL_MIN_S
                        await self._run_connection(connection)
                await trio.sleep(delay)
                delay = min(delay * 2, REDIAL_MAX_S)
        finally:
            self._dialing.discard(peer)

    async def _run_connection(self, connection: Connection) -> None:
        peer = str(connection.peer_id)
        now = trio.current_time()
        if self.police.refuse(peer, now):
            log.debug("refused a connection of %s: banned", peer[:8])
            why = f"banned for {self.police.banned_s(peer, now):.0f} s: forged transactions"
            with trio.move_on_after(REFUSE_SEND_S):
                with contextlib.suppress(*CONNECTION_ERRORS):
                    await connection.send(Goodbye(why))
            await connection.aclose()
            return
        if self._open_by.get(peer, 0) >= PEER_CONNECTIONS_MAX:
            connection.count_refused()
            log.info("refused a connection of %s: %d open already", peer[:8], PEER_CONNECTIONS_MAX)
            await connection.aclose()
            return
        self._open_by[peer] = self._open_by.get(peer, 0) + 1
        try:
            await self._serve_connection(connection, peer)
        finally:
            self._open_by[peer] -= 1
            if not self._open_by[peer]:
                del self._open_by[peer]

    async def _serve_connection(self, connection: Connection, peer: NodeId) -> None:
        is_peer = bool(connection.peer.roles & NODE_ROLES) and peer != self.me
        send, receive = trio.open_memory_channel[Message](SEND_QUEUE_MAX)
        link = _Peer(connection, send)
        try:
            async with trio.open_nursery() as nursery:
                link.scope = nursery.cancel_scope
                if is_peer:
                    self._peers.setdefault(peer, []).append(link)
                    if self.lanes is not None:
                        send.send_nowait(LanePort(self.lanes.port))
                    self._changed()
                    nursery.start_soon(self._write, link, receive, nursery.cancel_scope)
                await self._read(connection, peer, is_peer)
                nursery.cancel_scope.cancel()
        finally:
            if is_peer:
                self._peers[peer].remove(link)
                self._changed()
            send.close()
            await connection.aclose()

    def _changed(self) -> None:
        if self.on_peers_changed is not None:
            self.on_peers_changed(self.peers())

    async def _write(
        self,
        link: _Peer,
        queue: trio.MemoryReceiveChannel[Message],
        scope: trio.CancelScope,
    ) -> None:
        connection = link.connection
        try:
            async for message in queue:
                size = len(payload_of(message))
                with trio.fail_after(SEND_TIMEOUT_S + size / SEND_RATE_MIN_BYTES_S):
                    await connection.send(message)
                link.queued_bytes -= size
        except (*CONNECTION_ERRORS, trio.TooSlowError) as error:
            log.info(
                "sending to %s failed: %s", connection.peer_id.short, error or type(error).__name__
            )
            scope.cancel()  # the reader stops too: the connection is done

    async def _read(self, connection: Connection, peer: NodeId, is_peer: bool) -> None:
        try:
            while (message := await self._next(connection, is_peer)) is not None:
                if isinstance(message, LanePort):
                    if is_peer and self.lanes is not None:
                        self.lanes.set_port(peer, message.port)
                    continue
                with trio.fail_after(REQUEST_S):  # a reply the peer does not read, too
                    answered = await self.on_request(connection, message)
                if answered:
                    continue
                if is_peer:
                    self.on_peer_message(peer, message)
        except (*CONNECTION_ERRORS, trio.TooSlowError) as error:
            log.info("connection to %s ended: %s", peer[:8], error or type(error).__name__)

    async def _next(self, connection: Connection, is_peer: bool) -> Message | None:
        """The next message (None: the connection ended); a non-member's within
        ``REQUEST_IDLE_S``."""
        try:
            if is_peer:
                return await connection.receive()
            with trio.fail_after(REQUEST_IDLE_S):
                return await connection.receive()
        except trio.EndOfChannel:
            return None
        except trio.TooSlowError:
            connection.count_idle()
            log.info("closed %s's connection: idle %g s", connection.peer_id.short, REQUEST_IDLE_S)
            return None
