"""The p2p host: the trio machinery that runs a node's p2p core on real sockets.

Theory of operation
-------------------
:class:`P2PService` owns one :class:`~swarmlearn.p2p.node.P2PNode` (peer table + gossip)
and carries out what it decides; every protocol decision is the core's. The core runs under
the one driver (:class:`~swarmlearn.p2p.driver.CoreDriver`): by default the bare p2p node,
with trio's clock; a swarm node hands its whole composition instead (:meth:`drive`: the
ledger over gossip and the SL rounds around this same ``P2PNode``), so a node has one peer
table, one connection per peer and one driver. The host is the driver's outbox and carries
out the p2p effects it is handed:

==============================  ==========================================================
effect                          what the service does
==============================  ==========================================================
``Deliver(Dial(address))``      a dial task: TCP, the lane byte, mutual TLS (deadline:
                                ``dial_timeout_s``); success is ``Connected``, failure
                                ``DialFailed``; a dial already running is not repeated
``Deliver(Close(conn))``        the link sends what it has queued, then ends
``Send(peer, message)``         queued on the peer's link (bounded; a full queue drops and
                                counts, as gossip expects)
``SetTimer`` / ``CancelTimer``  the driver's timers
``Deliver(GossipDelivery)``     to the topic's subscriber channels (bounded; drops counted)
``Deliver(PeerUp/PeerDown)``    the connected set changes; ``wait_*`` callers wake
==============================  ==========================================================

Every TCP connection starts with one cleartext byte naming what follows: ``M`` a message
connection (mutual TLS 1.3 carrying a mux, :mod:`swarmlearn.p2p.service_link`), ``B`` a bulk
lane for blobs (:mod:`swarmlearn.p2p.service_blobs`). Anything else goes to
:meth:`P2PService.serve_client` (a swarm node: one-shot clients, whose first byte is TLS's
handshake record; the default refuses it). So a node listens on one port. Every
connection runs in the service's nursery; a link's end is ``Disconnected`` to the core.
Before a link starts, :meth:`P2PService.admit` may refuse the peer (by its certificate's
roles, or a ban): the one place that decides who is a peer.

The core's peer id is the certificate's (the SHA-256 of its public key), and its key
fingerprint the same digest, so a known peer presenting another key is a different peer id
and is refused as a mismatch. Known addresses are persisted in the data directory
(:mod:`swarmlearn.p2p.peerstore`) and dialed at the next start beside the seeds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from swarmlearn.errors import ConfigError
from swarmlearn.p2p.driver import CoreDriver, Store
from swarmlearn.p2p.gossip import (
    Gossip,
    GossipConfig,
    GossipMessage,
    Publish,
    Subscribe,
    Subscriptions,
)
from swarmlearn.p2p.gossip_messages import TOPIC_CONSENSUS, GossipDelivery
from swarmlearn.p2p.identity import Identity, PeerId, Role
from swarmlearn.p2p.limits import ByteBudget
from swarmlearn.p2p.messages import Goodbye
from swarmlearn.p2p.multiaddr import PeerAddress, parse_address
from swarmlearn.p2p.mux import MuxConfig
from swarmlearn.p2p.node import P2PNode
from swarmlearn.p2p.peerstore import load_peers, save_peers
from swarmlearn.p2p.peertable import (
    Close,
    Connected,
    Dial,
    DialFailed,
    Disconnected,
    PeerDown,
    PeerExchange,
    PeerTable,
    PeerTableConfig,
    PeerUp,
)
from swarmlearn.p2p.service_blobs import (
    LANE_BULK,
    LANE_MESSAGES,
    BlobConfig,
    BlobService,
    FetchedBlob,
    FetchError,
)
from swarmlearn.p2p.service_link import LINK_ERRORS, Link, LinkCounters
from swarmlearn.p2p.service_stats import ServiceCounters, ServiceStatistics, snapshot
from swarmlearn.p2p.tls import client_context, server_context
from swarmlearn.p2p.transfer import BlobManifest, BytesLike
from swarmlearn.p2p.transport import (
    Connection,
    TransportConfig,
    TransportCounters,
    accept_stream,
    connect_stream,
)
from swarmlearn.p2p.wire import Message
from swarmlearn.sansio import Core, Input, Receive, Request, Start

log = logging.getLogger(__name__)

__all__ = ["BlobConfig", "FetchError", "FetchedBlob", "P2PService", "ServiceConfig"]

REFUSE_SEND_S = 1.0  # the most a refused peer's connection waits for its Goodbye


@dataclass(frozen=True)
class ServiceConfig:
    host: str = "127.0.0.1"  # where to listen
    port: int = 0  # 0: any free port
    advertise_host: str | None = None  # the host others dial (default: ``host``)
    advertise_port: int = 0  # the port others dial (0: the one listened on)
    seeds: tuple[str, ...] = ()  # the sentinel's address, multiaddr or host:port
    data_dir: Path | None = None  # where known peers are kept across restarts
    topics: tuple[str, ...] = ()  # subscribed at start
    urgent_topics: tuple[str, ...] = (TOPIC_CONSENSUS,)  # on the priority-0 stream
    table: PeerTableConfig = field(default_factory=PeerTableConfig)
    gossip: GossipConfig = field(default_factory=GossipConfig)
    mux: MuxConfig = field(default_factory=MuxConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    blobs: BlobConfig = field(default_factory=BlobConfig)
    queue_bytes_max: int = 8 * 1024 * 1024  # per link, not yet taken by the mux
    write_budget_bytes: int = 256 * 1024  # data per writer turn
    deliveries_max: int = 10_000  # per subscriber channel
    persist_interval_s: float = 5.0
    rng_seed: int | None = None
    peer_roles: frozenset[Role] = frozenset()  # a peer's certificate needs one (empty: any)

    def __post_init__(self) -> None:
        for index, seed in enumerate(self.seeds):
            parse_address(seed, field=f"seeds[{index}]")
        if self.host in ("0.0.0.0", "::") and self.advertise_host is None:
            raise ConfigError(f"p2p host {self.host!r}: set advertise_host (the address to dial)")
        if self.queue_bytes_max < 1 or self.deliveries_max < 1 or self.persist_interval_s <= 0:
            raise ConfigError("p2p: queue_bytes_max, deliveries_max, persist_interval_s > 0")


class P2PService:
    """A node's p2p network service (see the module docstring)."""

    def __init__(self, identity: Identity, config: ServiceConfig | None = None) -> None:
        self.identity = identity
        self.config = config or ServiceConfig()
        self.me = str(identity.peer_id)
        self.blobs = BlobService(identity, self.config.blobs)
        # Lanes by their first byte: each taker serves the socket (that byte read) itself.
        self.lane_takers: dict[bytes, Callable[[trio.SocketStream], None]] = {
            LANE_BULK: self.blobs.take_lane
        }
        self.counters = ServiceCounters()
        self.closed_links = LinkCounters()
        self.address: PeerAddress | None = None
        self._rng = random.Random(self.config.rng_seed)
        self._links: dict[int, Link] = {}
        self._next_conn = 0
        self._dialing: set[tuple[str, int]] = set()
        self._changed = trio.Event()
        self._subscribers: dict[str, list[trio.MemorySendChannel[GossipDelivery]]] = {}
        self._transport_counters = TransportCounters()
        self._budget = ByteBudget()  # partial frames of every link, beyond their reserves
        self._server_context = server_context(identity)
        self._client_context = client_context(identity)
        self._nursery: trio.Nursery | None = None
        self._persisted: list[str] = []
        # Read now, so that a bad peers file is one ConfigError line before anything starts.
        data_dir = self.config.data_dir
        self._stored = load_peers(data_dir) if data_dir is not None else []
        self.node = self._build_node()
        self.driver = CoreDriver(self.node, self, None, self._deliver, clock=trio.current_time)
        self.driver.on_handled = self._handled
        self._on_deliver: Callable[[Any], None] = lambda value: None
        self._after: Callable[[Input], None] = lambda event: None

    def drive(
        self,
        core: Core,
        *,
        store: Store | None,
        on_deliver: Callable[[Any], None],
        clock: Callable[[], float],
        on_handled: Callable[[Input], None] | None = None,
    ) -> CoreDriver:
        """Run ``core`` instead of the bare p2p node: a composition around :attr:`node` (the
        host keeps carrying out the p2p effects; every other ``Deliver`` goes to
        ``on_deliver``). Before :meth:`run`."""
        self.driver = CoreDriver(core, self, store, self._deliver, clock=clock)
        self.driver.on_handled = self._handled
        self._on_deliver = on_deliver
        self._after = on_handled or (lambda event: None)
        return self.driver

    # ------------------------------------------------------------ running

    async def run(
        self,
        first: Start | None = None,
        *,
        task_status: trio.TaskStatus[PeerAddress] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen, join the swarm and serve until cancelled (or :meth:`stop`); the core's
        first input is ``first`` (default ``Start()``); ``started`` gets this node's address
        (a multiaddr with its peer id)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                host, port = await nursery.start(self._listen)
                advertised = self.config.advertise_host or host
                self.address = PeerAddress(advertised, self.config.advertise_port or port, self.me)
                table = self.node.peers
                table.config = dataclasses.replace(table.config, listen=(self.address,))
                if self.config.data_dir is not None:
                    nursery.start_soon(self._persist_every)
                await nursery.start(self.driver.run, first or Start())
                for topic in self.config.topics:
                    self._input(Request(Subscribe(topic)))
                task_status.started(self.address)
        finally:
            self.blobs.close()
            self._persist()

    def stop(self) -> None:
        """End :meth:`run`: every connection and lane closes; known peers are persisted."""
        self.blobs.close()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _build_node(self) -> P2PNode:
        config = self.config
        seeds = [parse_address(seed, field="seeds") for seed in config.seeds]
        seeds += [address for address in self._stored if address.peer != self.me]
        table_config = dataclasses.replace(config.table, seeds=tuple(seeds))
        rng = self._rng
        table = PeerTable(self.me, random.Random(rng.getrandbits(64)), table_config)
        gossip = Gossip(self.me, random.Random(rng.getrandbits(64)), config.gossip)
        return P2PNode(rng, table, gossip)

    # ------------------------------------------------------------ the application's side

    def subscribe(self, topic: str) -> trio.MemoryReceiveChannel[GossipDelivery]:
        """Join ``topic``; its messages (not our own) arrive on the returned channel."""
        send, receive = trio.open_memory_channel[GossipDelivery](self.config.deliveries_max)
        self._subscribers.setdefault(topic, []).append(send)
        self._input(Request(Subscribe(topic)))
        return receive

    def publish(self, topic: str, data: bytes) -> None:
        """Publish ``data`` on ``topic`` (to every topic peer; they forward it on)."""
        self.counters.published += 1
        self._input(Request(Publish(topic, data)))

    async def serve_blob(self, data: BytesLike, chunk_bytes: int | None = None) -> BlobManifest:
        """Serve ``data`` to peers that fetch it by the manifest's root (a view is kept)."""
        return await self.blobs.serve(data, chunk_bytes)

    async def fetch_blob(
        self,
        root: bytes,
        sources: Sequence[str],
        buffer: bytearray | memoryview | None = None,
    ) -> FetchedBlob:
        """Fetch blob ``root`` from the peers ``sources`` (peer ids: at their known addresses,
        or multiaddrs with peer ids); every chunk is verified against the manifest."""
        addresses = []
        for source in sources:
            address = self._address_of(source)
            if address is not None:
                addresses.append(address)
        if not addresses:
            raise FetchError(f"blob {root.hex()[:16]}: no known address for {list(sources)}")
        return await self.blobs.fetch(root, addresses, buffer)

    def _address_of(self, source: str) -> PeerAddress | None:
        if source.startswith("/"):
            return parse_address(source, field="source")
        known = self.node.peers.known.get(source)
        return known.address if known is not None and known.address.port else None

    def connected(self) -> list[str]:
        return self.node.peers.connected()

    def peers(self) -> list[str]:
        """The connected peers (the driver's outbox: where a ``Broadcast`` goes)."""
        return self.connected()

    def known(self) -> list[str]:
        return sorted(p for p, e in self.node.peers.known.items() if e.address.port)

    async def wait_connected(self, count: int) -> None:
        """Until at least ``count`` peers are connected (callers put a deadline around it)."""
        while len(self.connected()) < count:
            await self.wait_changed()

    async def wait_known(self, count: int) -> None:
        """Until at least ``count`` peers' addresses are known."""
        while len(self.known()) < count:
            await self.wait_changed()

    def topic_peers(self, topic: str) -> list[str]:
        """Connected peers known to be subscribed to ``topic``."""
        gossip = self.node.gossip
        return gossip.topic_peers(topic) if gossip is not None else []

    async def wait_topic_peers(self, topic: str, count: int) -> None:
        """Until at least ``count`` connected peers are subscribed to ``topic``."""
        while len(self.topic_peers(topic)) < count:
            await self.wait_changed()

    async def wait_changed(self) -> None:
        """Until a peer comes up or goes down, a connection is refused, closed or ends, or a
        peer exchange or a subscription change arrives."""
        await self._changed.wait()

    def statistics(self) -> ServiceStatistics:
        return snapshot(self)

    # ------------------------------------------------------------ the driver's side

    def _input(self, event: Input) -> None:
        """Queue an input for the core (the driver handles it in order)."""
        self.driver.submit(event)

    def _receive(self, peer: str, message: Message) -> None:
        if not self.take(peer, message):
            self._input(Receive(peer, message))

    def take(self, peer: str, message: Message) -> bool:
        """A message the host keeps from the core (True: taken); none by default."""
        return False

    def _handled(self, event: Input) -> None:
        if isinstance(event, Receive) and isinstance(event.message, PeerExchange | Subscriptions):
            self._signal_change()  # addresses or topic peers may have been learnt
        self._after(event)

    def _signal_change(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def peer_event(self, value: PeerUp | PeerDown) -> None:
        """A peer came up or went down (after the core saw it); nothing by default."""

    def _deliver(self, value: object) -> None:
        """What the core delivers: the p2p commands here, anything else to ``on_deliver``."""
        match value:
            case Dial(address):
                key = (address.host, address.port)
                if key not in self._dialing and self._nursery is not None:
                    self._dialing.add(key)
                    self._nursery.start_soon(self._dial, address)
            case Close(conn, reason):
                link = self._links.get(conn)
                if link is not None:
                    link.ended = link.ended or reason
                    link.close()
                self._signal_change()  # a refusal is news too (statistics().refused)
            case PeerUp() | PeerDown():
                self.peer_event(value)
                self._signal_change()
            case GossipDelivery(topic):
                self.counters.delivered += 1
                for channel in list(self._subscribers.get(topic, [])):
                    try:
                        channel.send_nowait(value)
                    except trio.WouldBlock:
                        self.counters.deliveries_dropped += 1
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        self._subscribers[topic].remove(channel)  # the subscriber left
            case _:
                self._on_deliver(value)

    def send(self, peer: str, message: Message) -> None:
        """Queue ``message`` on ``peer``'s link (dropped and counted if there is none or its
        queue is full: the protocols repair loss)."""
        self._send(peer, message)

    def priority(self, message: Message) -> int:
        """The link stream a message goes on: 0 (urgent) or 1."""
        urgent = (
            not isinstance(message, GossipMessage) or message.topic in self.config.urgent_topics
        )
        return 0 if urgent else 1

    def _send(self, peer: str, message: Message) -> None:
        link = self._link_for(peer)
        if link is None:
            self.counters.unroutable += 1
            return
        if not link.queue(message, self.priority(message)):
            self.counters.queue_full += 1

    def _link_for(self, peer: str) -> Link | None:
        """The core's connection to ``peer``, else the newest link to it (a refused peer
        gets a peer exchange on the connection being refused)."""
        conn = self.node.peers.by_peer.get(peer)
        if conn is not None and conn in self._links:
            return self._links[conn]
        links = [link for link in self._links.values() if link.peer == peer and not link.closing]
        return max(links, key=lambda link: link.conn) if links else None

    # ------------------------------------------------------------ connections

    async def _listen(self, *, task_status: trio.TaskStatus[tuple[str, int]]) -> None:
        listeners = await trio.open_tcp_listeners(self.config.port, host=self.config.host)
        sockname = listeners[0].socket.getsockname()
        task_status.started((str(sockname[0]), int(sockname[1])))
        await trio.serve_listeners(self._accept, listeners)

    async def _accept(self, tcp: trio.SocketStream) -> None:
        self.counters.accepted += 1
        counters, limits = self._transport_counters, self.config.transport
        if (
            counters.connections_open + counters.handshakes_open >= limits.connections_max
            or counters.handshakes_open >= limits.handshakes_max
        ):
            counters.connections_refused += 1
            counters.last_error = "too many connections or handshakes at once"
            await trio.aclose_forcefully(tcp)
            return
        counters.handshakes_open += 1  # until the first byte and, for a link, its TLS are done
        try:
            kind, connection = await self._classify(tcp)
        finally:
            counters.handshakes_open -= 1
        if connection is not None:
            if await self._admitted(connection):
                await self._run_link(connection, outbound=False, address=None)
        elif kind is not None:
            await self.serve_client(tcp, kind)

    async def _classify(self, tcp: trio.SocketStream) -> tuple[bytes | None, Connection | None]:
        """The connection's first byte and, for a link, its TLS (within the handshake
        deadline); a lane is handed to the blobs here, and a failure closes it: (None, None)."""
        try:
            with trio.fail_after(self.config.transport.handshake_timeout_s):
                kind = bytes(await tcp.socket.recv(1, socket.MSG_PEEK))
                taker = self.lane_takers.get(kind)
                if taker is not None or kind == LANE_MESSAGES:
                    await tcp.receive_some(1)
                if taker is not None:
                    taker(tcp)
                    return None, None
                if kind != LANE_MESSAGES:
                    return kind, None  # a client's (its first byte still unread)
                connection = await accept_stream(
                    self.identity,
                    tcp,
                    config=self.config.transport,
                    context=self._server_context,
                    counters=self._transport_counters,
                    budget=self._budget,
                )
        except (trio.TooSlowError, OSError, *LINK_ERRORS) as error:
            self.counters.handshakes_failed += 1
            log.info("p2p: refused an inbound connection: %s", error)
            await trio.aclose_forcefully(tcp)
            return None, None
        return kind, connection

    async def serve_client(self, tcp: trio.SocketStream, first: bytes) -> None:
        """A connection that is neither a link nor a lane (``first``: its first byte, still
        unread): refused here; a swarm node serves its one-shot clients."""
        self.counters.handshakes_failed += 1
        log.info("p2p: refused an inbound connection: unknown connection kind %r", first)
        await trio.aclose_forcefully(tcp)

    def admit(self, connection: Connection) -> str:
        """Why this authenticated peer may not hold a link ("" when it may): the one check of
        certificates and roles."""
        roles = self.config.peer_roles
        if roles and not connection.peer.roles & roles:
            names = ",".join(sorted(role.value for role in roles))
            return f"not a peer: the certificate grants none of the roles {names}"
        return ""

    async def _admitted(self, connection: Connection) -> bool:
        """Admit ``connection``, or tell its peer why not (one ``Goodbye``) and close it."""
        reason = self.admit(connection)
        if not reason:
            return True
        self.counters.refused_peers += 1
        log.info("p2p: refused %s: %s", connection.peer_id.short, reason)
        with trio.move_on_after(REFUSE_SEND_S):
            with contextlib.suppress(*LINK_ERRORS, OSError):
                await connection.send(Goodbye(reason))
        await connection.aclose()
        return False

    async def _dial(self, address: PeerAddress) -> None:
        self.counters.dials += 1
        try:
            assert self.node is not None
            with trio.fail_after(self.node.peers.config.dial_timeout_s):
                tcp = await trio.open_tcp_stream(address.host, address.port)
                try:
                    await tcp.send_all(LANE_MESSAGES)
                    connection = await connect_stream(
                        self.identity,
                        tcp,
                        config=self.config.transport,
                        context=self._client_context,
                        counters=self._transport_counters,
                        budget=self._budget,
                    )
                except BaseException:
                    await trio.aclose_forcefully(tcp)
                    raise
        except (trio.TooSlowError, OSError, *LINK_ERRORS) as error:
            self._dialing.discard((address.host, address.port))
            self.counters.dials_failed += 1
            self._input(Request(DialFailed(address, f"{type(error).__name__}: {error}")))
            return
        self._dialing.discard((address.host, address.port))
        if not await self._admitted(connection):
            self._input(Request(DialFailed(address, "refused: not a peer")))
            return
        await self._run_link(connection, outbound=True, address=address)

    async def _run_link(
        self, connection: Connection, *, outbound: bool, address: PeerAddress | None
    ) -> None:
        self._next_conn += 1
        conn = self._next_conn
        config = self.config
        peer = str(connection.peer_id)
        link = Link(
            conn,
            peer,
            connection,
            outbound=outbound,
            mux_config=config.mux,
            queue_bytes_max=config.queue_bytes_max,
            write_budget_bytes=config.write_budget_bytes,
            frame_bytes_max=config.transport.frame_bytes_max,
        )
        self._links[conn] = link
        self.counters.links_opened += 1
        try:
            key = PeerId.parse(peer).digest
            self._input(Request(Connected(conn, peer, key, outbound, address)))
            await link.run(lambda message: self._receive(peer, message))
        finally:
            del self._links[conn]
            self.counters.links_closed += 1
            for name, value in link.counters.__dict__.items():  # totals outlive the link
                setattr(self.closed_links, name, getattr(self.closed_links, name) + value)
            if self.node is not None:
                self._input(Request(Disconnected(conn, link.ended or "ended")))
            self._signal_change()

    # ------------------------------------------------------------ persistence

    async def _persist_every(self) -> None:
        while True:
            await trio.sleep(self.config.persist_interval_s)
            self._persist()

    def _persist(self) -> None:
        if self.config.data_dir is None or self.node is None:
            return
        addresses = [
            entry.address.with_peer(peer)
            for peer, entry in self.node.peers.known.items()
            if entry.address.port and peer != self.me
        ]
        texts = sorted(str(address) for address in addresses)
        if texts != self._persisted:
            try:
                save_peers(self.config.data_dir, addresses)
            except OSError as error:  # a cache: a full disk costs it, not the node
                log.warning("peers file not saved (%s); tried again later", error.strerror)
                return
            self._persisted = texts
