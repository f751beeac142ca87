"""What the ledger tells its application and what the application asks of it (sans-IO values).

``SubmitTx`` is a :class:`~swarmlearn.sansio.Request`; the rest arrive as
:class:`~swarmlearn.sansio.Deliver` effects.
"""

from __future__ import annotations

from dataclasses import dataclass

from swarmlearn.consensus.tendermint.types import Validator
from swarmlearn.p2p.wire import Message


@dataclass(frozen=True)
class Genesis(Message, tag=0x4C):
    """The first state of a chain, made by the sentinel and fetched from it by every other
    node, which refuses it unless ``ca_fingerprint`` (SHA-256 of the CA certificate, DER) is
    its own CA's."""

    chain_id: str
    time_ms: int
    validators: tuple[Validator, ...]
    ca_fingerprint: bytes = b""
    ca_certificate: bytes = b""  # DER: the swarm application checks joins against it


@dataclass(frozen=True)
class SubmitTx:
    """Request: put ``data`` on the ledger."""

    data: bytes


@dataclass(frozen=True)
class TxRefused:
    """Delivered when a submitted transaction is refused (and why)."""

    data: bytes
    reason: str


@dataclass(frozen=True)
class Committed:
    """Delivered for every committed block."""

    height: int
    block_hash: bytes
    round: int
    txs: tuple[bytes, ...]
    app_hash: bytes
    time_ms: int = 0  # the block's (BFT) time


@dataclass(frozen=True)
class EvidenceFound:
    """Delivered when a validator is caught signing two different votes or proposals."""

    validator: str
    height: int
    round: int
    what: str  # "PREVOTE", "PRECOMMIT" or "proposal"
