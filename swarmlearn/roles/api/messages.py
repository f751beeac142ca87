"""The node API's messages (tags 0x80-0x8F): what clients (SWCI, SL, joining nodes) ask a node.

They travel over the same mutual-TLS transport as everything else; the node answers on the
connection the request came in on.
"""

from __future__ import annotations

from dataclasses import dataclass

from swarmlearn.consensus.tendermint.events import Genesis
from swarmlearn.p2p.wire import Message


@dataclass(frozen=True)
class SubmitRequest(Message, tag=0x80):
    """Put ``data`` on the ledger; with ``wait_s`` > 0, answer once it is committed (or not)."""

    data: bytes
    wait_s: float = 0.0


@dataclass(frozen=True)
class SubmitReply(Message, tag=0x81):
    accepted: bool
    reason: str
    height: int = 0  # where it was committed, when the request waited for it


@dataclass(frozen=True)
class StatusRequest(Message, tag=0x82):
    pass


@dataclass(frozen=True)
class NodeStatus(Message, tag=0x83):
    node: str
    chain_id: str
    height: int  # the last committed height
    last_block_hash: bytes
    app_hash: bytes
    validators: tuple[str, ...]
    peers: tuple[str, ...]
    blocks_with_txs: int
    txs: int


@dataclass(frozen=True)
class GenesisRequest(Message, tag=0x84):
    pass


@dataclass(frozen=True)
class GenesisReply(Message, tag=0x85):
    genesis: Genesis


@dataclass(frozen=True)
class LedgerQuery(Message, tag=0x86):
    """Read the swarm ledger's state: ``what`` is "members", "contracts" or "refusals"."""

    what: str


@dataclass(frozen=True)
class LedgerReply(Message, tag=0x87):
    json: str  # a JSON document: the same views the HTTP API will serve
