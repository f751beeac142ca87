"""Gossip's vocabulary: wire messages (tags 0x18-0x1D), the application's requests and
deliveries, validation verdicts, content-addressed message ids, the configuration and the
counters (see :mod:`swarmlearn.p2p.gossip`)."""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from swarmlearn.p2p.gossip_cache import MessageId
from swarmlearn.p2p.wire import Message
from swarmlearn.sansio import NodeId

TOPIC_CONSENSUS = "consensus"
TOPIC_MEMBERSHIP = "membership"
TOPIC_ROUNDS = "rounds"
TOPIC_BYTES_MAX = 128


@dataclass(frozen=True)
class Subscriptions(Message, tag=0x18):
    subscribe: tuple[str, ...]
    unsubscribe: tuple[str, ...] = ()


@dataclass(frozen=True)
class GossipMessage(Message, tag=0x19):
    topic: str
    data: bytes
    #: False: its publisher sent it to every node that needs it (a swarm node: it is linked to
    #: every validator); receivers deliver it and do not forward it along their mesh.
    forward: bool = True


@dataclass(frozen=True)
class IHave(Message, tag=0x1A):
    topic: str
    ids: tuple[bytes, ...]


@dataclass(frozen=True)
class IWant(Message, tag=0x1B):
    ids: tuple[bytes, ...]


@dataclass(frozen=True)
class Graft(Message, tag=0x1C):
    topic: str
    mesh: int = 0  # the sender's mesh size for the topic before this graft (our extension)


@dataclass(frozen=True)
class Prune(Message, tag=0x1D):
    topic: str
    backoff_s: int


# ---------------------------------------------------------------- the application's side


@dataclass(frozen=True)
class Subscribe:
    topic: str


@dataclass(frozen=True)
class Unsubscribe:
    topic: str


@dataclass(frozen=True)
class Publish:
    topic: str
    data: bytes
    forward: bool = True  # False: this node's flood reaches everyone who needs the message


@dataclass(frozen=True)
class GossipDelivery:
    topic: str
    data: bytes
    message_id: bytes
    source: NodeId  # the peer it came from (not necessarily its author)


class Verdict(enum.Enum):
    ACCEPT = "accept"
    REJECT = "reject"  # invalid: dropped, the sender penalized
    IGNORE = "ignore"  # dropped without penalty (e.g. stale)


Validator = Callable[[NodeId, str, bytes], Verdict]


def message_id(topic: str, data: bytes) -> MessageId:
    name = topic.encode()
    return hashlib.sha256(len(name).to_bytes(2, "big") + name + data).digest()[:20]


@dataclass(frozen=True)
class GossipConfig:
    d: int = 4
    d_lo: int = 3
    d_hi: int = 6
    d_lazy: int = 6
    d_score: int = 3
    d_out: int = 2
    graft_accept_max: int = 5  # inbound peers' GRAFTs are accepted below this mesh size
    full_mesh_max: int = 12  # a swarm of at most this many other nodes: the mesh is all of them
    heartbeat_s: float = 1.0
    history_length: int = 5
    history_gossip: int = 3
    seen_ttl_s: float = 120.0
    seen_max: int = 200_000
    prune_backoff_s: int = 60
    trim_backoff_s: int = 5  # a PRUNE for room only (no fault): the peer may graft again soon
    message_bytes_max: int = 1024 * 1024
    ihave_max: int = 10
    iwant_ids_max: int = 500
    retransmit_max: int = 3
    send_max: int = 10_000
    topics_max: int = 64
    invalid_weight: float = -10.0
    misbehaviour_weight: float = -1.0
    score_decay: float = 0.9
    prune_threshold: float = -20.0  # below: out of every mesh at the next heartbeat
    gossip_threshold: float = -30.0  # below: no IHAVE/IWANT either way
    graylist_threshold: float = -100.0  # below: everything from the peer is ignored

    def __post_init__(self) -> None:
        if not 0 < self.d_lo <= self.d <= self.d_hi or not 0 <= self.d_out < self.d_lo:
            raise ValueError("need 0 < d_lo <= d <= d_hi and 0 <= d_out < d_lo")
        if self.d_score > self.d or self.heartbeat_s <= 0:
            raise ValueError("need d_score <= d and heartbeat_s > 0")
        if self.full_mesh_max < 0:
            raise ValueError("need full_mesh_max >= 0")
        if not 0 <= self.trim_backoff_s <= self.prune_backoff_s:
            raise ValueError("need 0 <= trim_backoff_s <= prune_backoff_s")
        if not self.d <= self.graft_accept_max <= self.d_hi:
            raise ValueError("need d <= graft_accept_max <= d_hi")


@dataclass
class GossipCounters:
    published: int = 0
    delivered: int = 0
    copies: int = 0  # full messages received, first or not
    not_forwarded: int = 0  # first copies whose publisher said it reached everyone
    duplicates: int = 0
    floods: int = 0  # duplicates from a peer that had sent the same message already
    invalid: int = 0
    ignored: int = 0
    dropped_sends: int = 0
    grafts_refused: int = 0
