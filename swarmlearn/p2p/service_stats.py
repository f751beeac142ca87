"""The p2p service's counters and its ``statistics()`` snapshot (plain data, JSON-ready)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from swarmlearn.p2p.service import P2PService


@dataclass
class ServiceCounters:
    accepted: int = 0  # inbound TCP connections (message and bulk)
    handshakes_failed: int = 0
    dials: int = 0
    dials_failed: int = 0
    links_opened: int = 0
    links_closed: int = 0
    published: int = 0
    delivered: int = 0  # gossip messages delivered to this node (others' messages)
    deliveries_dropped: int = 0  # a subscriber channel was full
    queue_full: int = 0  # messages dropped: the peer's link queue was full
    unroutable: int = 0  # messages for a peer with no link
    refused_peers: int = 0  # authenticated, but not admitted (roles, a ban)


@dataclass(frozen=True)
class ServiceStatistics:
    peer_id: str
    address: str  # our multiaddr
    connected: tuple[str, ...]
    known: tuple[str, ...]  # peers with a dialable address
    outbound: int
    inbound: int
    dialing: int
    refused: dict[str, int]  # why the peer table refused connections
    links: int
    queued_bytes: int  # waiting for the mux, all links
    messages_sent: int  # all links, closed ones included
    messages_received: int
    messages_invalid: int
    counters: dict[str, int]
    gossip: dict[str, Any]
    blobs_serving: int
    blobs: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def snapshot(service: P2PService) -> ServiceStatistics:
    node = service.node
    links = list(service._links.values())
    counters = [service.closed_links, *(link.counters for link in links)]
    table = node.peers.statistics() if node is not None else None
    gossip = node.gossip if node is not None else None
    gossip_counters = dataclasses.asdict(gossip.counters) if gossip is not None else {}
    return ServiceStatistics(
        peer_id=service.me,
        address=str(service.address) if service.address is not None else "",
        connected=tuple(service.connected()),
        known=tuple(service.known()),
        outbound=table.outbound if table else 0,
        inbound=table.inbound if table else 0,
        dialing=table.dialing if table else 0,
        refused=dict(node.peers.counters.refused) if node is not None else {},
        links=len(links),
        queued_bytes=sum(link.pending_bytes for link in links),
        messages_sent=sum(c.messages_sent for c in counters),
        messages_received=sum(c.messages_received for c in counters),
        messages_invalid=sum(c.messages_invalid for c in counters),
        counters=dataclasses.asdict(service.counters),
        gossip=gossip_counters,
        blobs_serving=len(service.blobs.serving()),
        blobs=dataclasses.asdict(service.blobs.counters),
    )
