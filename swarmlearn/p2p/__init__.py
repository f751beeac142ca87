"""Peer-to-peer layer: identity, wire codec, framing and the mutual-TLS transport."""

from swarmlearn.p2p.framing import FrameReader, encode_frame
from swarmlearn.p2p.identity import (
    CertificateInfo,
    Identity,
    IdentityPaths,
    PeerId,
    Role,
    identity_paths_from_env,
    load_identity,
)
from swarmlearn.p2p.messages import Chunk, Goodbye, Ping, Pong
from swarmlearn.p2p.transport import (
    Connection,
    Listener,
    TransportConfig,
    TransportStatistics,
    accept_stream,
    connect_stream,
    dial,
)
from swarmlearn.p2p.wire import Message, Payload, decode_body, encode_body, encode_header

__all__ = [
    "CertificateInfo",
    "Chunk",
    "Connection",
    "FrameReader",
    "Goodbye",
    "Identity",
    "IdentityPaths",
    "Listener",
    "Message",
    "Payload",
    "PeerId",
    "Ping",
    "Pong",
    "Role",
    "TransportConfig",
    "TransportStatistics",
    "accept_stream",
    "connect_stream",
    "decode_body",
    "dial",
    "encode_body",
    "encode_frame",
    "encode_header",
    "identity_paths_from_env",
    "load_identity",
]
