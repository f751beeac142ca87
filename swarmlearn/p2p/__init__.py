"""Peer-to-peer layer: identity, wire codec, framing, the mutual-TLS transport, and on top of
them the peer table, gossip, chunked blob manifests (sans-IO cores), the bulk lanes (a
blob's fetch, a round's push) and the trio service that runs them all on real sockets.

The public API is re-exported here. Importing the package loads only what the sans-IO cores
share (wire, framing, messages) and no I/O (not even cryptography's x509, which reaches the
socket module): the consensus and SL cores import it,
and ``tools/check_boundary.py`` holds them to loading no trio, socket or ssl. The rest (the
transport, the service, gossip, the peer table, blob transfer, certificates) is imported on
first use of one of its names (module ``__getattr__``), so ``import swarmlearn.p2p`` stays
cheap::

    from swarmlearn.p2p import P2PService, ServiceConfig  # imports swarmlearn.p2p.service
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from swarmlearn.p2p.framing import FrameReader, encode_frame
from swarmlearn.p2p.messages import Chunk, Goodbye, Ping, Pong
from swarmlearn.p2p.wire import Message, Payload, decode_body, encode_body, encode_header

if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from swarmlearn.p2p.address import parse_host_port
    from swarmlearn.p2p.bulk import BlobServer, Fetch, FetchResult, Source, dial_tls, fetch_manifest
    from swarmlearn.p2p.bulk_push import LaneLimits, LanePort, RoundLanes
    from swarmlearn.p2p.certs import CertificateAuthority, create_ca, issue_certificate
    from swarmlearn.p2p.gossip import Gossip
    from swarmlearn.p2p.gossip_messages import GossipConfig, GossipDelivery, Publish, Subscribe
    from swarmlearn.p2p.identity import (
        CertificateInfo,
        Identity,
        IdentityPaths,
        PeerId,
        Role,
        identity_paths_from_env,
        load_identity,
    )
    from swarmlearn.p2p.lane import LaneThreads, TlsPipe, dial_lane
    from swarmlearn.p2p.multiaddr import PeerAddress, parse_address
    from swarmlearn.p2p.mux import Mux, MuxConfig
    from swarmlearn.p2p.node import P2PNode
    from swarmlearn.p2p.peertable import PeerDown, PeerTable, PeerTableConfig, PeerUp
    from swarmlearn.p2p.service import P2PService, ServiceConfig
    from swarmlearn.p2p.service_blobs import BlobConfig, FetchedBlob, FetchError
    from swarmlearn.p2p.service_stats import ServiceStatistics
    from swarmlearn.p2p.tls import client_context, peer_certificate_info, server_context
    from swarmlearn.p2p.transfer import Assembler, BlobManifest, BlobTooLarge, ChunkScheduler
    from swarmlearn.p2p.transport import (
        Connection,
        Listener,
        TransportConfig,
        TransportStatistics,
        accept_stream,
        connect_stream,
        dial,
    )

#: Lazily re-exported names, by the module (under ``swarmlearn.p2p``) that defines them.
_LAZY: dict[str, tuple[str, ...]] = {
    "address": ("parse_host_port",),
    "bulk": ("BlobServer", "Fetch", "FetchResult", "Source", "dial_tls", "fetch_manifest"),
    "bulk_push": ("LaneLimits", "LanePort", "RoundLanes"),
    "certs": ("CertificateAuthority", "create_ca", "issue_certificate"),
    "gossip": ("Gossip",),
    "gossip_messages": ("GossipConfig", "GossipDelivery", "Publish", "Subscribe"),
    "identity": (
        "CertificateInfo",
        "Identity",
        "IdentityPaths",
        "PeerId",
        "Role",
        "identity_paths_from_env",
        "load_identity",
    ),
    "lane": ("LaneThreads", "TlsPipe", "dial_lane"),
    "multiaddr": ("PeerAddress", "parse_address"),
    "mux": ("Mux", "MuxConfig"),
    "node": ("P2PNode",),
    "peertable": ("PeerDown", "PeerTable", "PeerTableConfig", "PeerUp"),
    "service": ("P2PService", "ServiceConfig"),
    "service_blobs": ("BlobConfig", "FetchError", "FetchedBlob"),
    "service_stats": ("ServiceStatistics",),
    "tls": ("client_context", "peer_certificate_info", "server_context"),
    "transfer": ("Assembler", "BlobManifest", "BlobTooLarge", "ChunkScheduler"),
    "transport": (
        "Connection",
        "Listener",
        "TransportConfig",
        "TransportStatistics",
        "accept_stream",
        "connect_stream",
        "dial",
    ),
}
_LAZY_MODULE = {name: module for module, names in _LAZY.items() for name in names}


if not TYPE_CHECKING:  # type checkers see the imports above, so a misspelt name is an error

    def __getattr__(name: str) -> Any:
        """Import a lazily re-exported name's module on first use (PEP 562)."""
        module = _LAZY_MODULE.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value  # later look-ups skip this function
        return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_MODULE))


__all__ = [
    "Assembler",
    "BlobConfig",
    "BlobManifest",
    "BlobServer",
    "BlobTooLarge",
    "CertificateAuthority",
    "CertificateInfo",
    "Chunk",
    "ChunkScheduler",
    "Connection",
    "Fetch",
    "FetchError",
    "FetchResult",
    "FetchedBlob",
    "FrameReader",
    "Goodbye",
    "Gossip",
    "GossipConfig",
    "GossipDelivery",
    "Identity",
    "IdentityPaths",
    "LaneLimits",
    "LanePort",
    "LaneThreads",
    "Listener",
    "Message",
    "Mux",
    "MuxConfig",
    "P2PNode",
    "P2PService",
    "Payload",
    "PeerAddress",
    "PeerDown",
    "PeerId",
    "PeerTable",
    "PeerTableConfig",
    "PeerUp",
    "Ping",
    "Pong",
    "Publish",
    "Role",
    "RoundLanes",
    "ServiceConfig",
    "ServiceStatistics",
    "Source",
    "Subscribe",
    "TlsPipe",
    "TransportConfig",
    "TransportStatistics",
    "accept_stream",
    "client_context",
    "connect_stream",
    "create_ca",
    "decode_body",
    "dial",
    "dial_lane",
    "dial_tls",
    "encode_body",
    "encode_frame",
    "encode_header",
    "fetch_manifest",
    "identity_paths_from_env",
    "issue_certificate",
    "load_identity",
    "parse_address",
    "parse_host_port",
    "peer_certificate_info",
    "server_context",
]
