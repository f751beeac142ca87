"""The swarm ledger's transactions (tags 0x90-0x9F): signed envelopes and their bodies.

Every transaction is a :class:`SignedTx`: the sender's node id, the canonical bytes of one
body message, and the sender's signature over :class:`TxSignBytes` (chain id included). A
node can only act as itself: :class:`Join` carries the sender's certificate, which must be
issued by the swarm's CA and whose key must be the sender's; later transactions are checked
against the key the registry recorded at the join. :class:`Leave` is the way out: a member
leaves as itself, or an operator removes a dead one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from swarmlearn.p2p.wire import Message, decode_header, encode_header


@dataclass(frozen=True)
class Unique:
    """A request a sender may repeat: the mempool refuses bytes it has committed before, so
    ``nonce`` (senders use the time in ns) makes each repetition a distinct transaction.
    Keyword-only, so it comes last in the constructor and on the wire (after the fields of
    the message that inherits it)."""

    nonce: int = field(default=0, kw_only=True)


@dataclass(frozen=True)
class TensorSpec(Message, tag=0x90):
    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class TxSignBytes(Message, tag=0x91):
    chain_id: str
    sender: str
    body: bytes


@dataclass(frozen=True)
class SignedTx(Message, tag=0x92):
    sender: str
    body: bytes  # the canonical header bytes of one body message
    signature: bytes

    def sign_bytes(self, chain_id: str) -> bytes:
        return encode_header(TxSignBytes(chain_id, self.sender, self.body))

    def decoded_body(self) -> Message:
        return decode_header(self.body)


@dataclass(frozen=True)
class Join(Message, tag=0x93):
    """Enter the registry (or update one's address); SN members also get a validator seat."""

    address: str
    certificate: bytes  # DER


@dataclass(frozen=True)
class CreateContract(Unique, Message, tag=0x94):
    """An operator (swci) names a training contract."""

    name: str
    merge_method: str = "mean"
    grace_ms: int = 2_000  # after min_peers check-ins, how long the rest may still join
    exchange_base_ms: int = 10_000  # the exchange deadline: base + per GB of model
    exchange_ms_per_gb: int = 30_000


@dataclass(frozen=True)
class ResetContract(Unique, Message, tag=0x95):
    """An operator (swci) starts a contract over: round numbers, layout and history reset."""

    name: str


@dataclass(frozen=True)
class CheckIn(Unique, Message, tag=0x96):
    """An SL node commits to its exact weights for a round, before any byte moves. Its
    ``nonce`` (the node's count of check-ins), with ``session``, makes each a distinct
    transaction: a re-run that checks in the same weights after ``RESET CONTRACT`` too."""

    contract: str
    round: int
    root: bytes  # the manifest root of its weights
    weight: int  # HPE's nodeWeightage (1-100) or a sample count
    min_peers: int
    layout: tuple[TensorSpec, ...]
    total_bytes: int
    merge_method: str = "mean"
    #: The node's own training is over: these are its final weights, and it keeps checking
    #: in until every node of a round is final (HPE's ``checkinModelOnTrainEnd``).
    final: bool = False
    #: The trainer session (at the node's local endpoint) this check-in is for.
    session: int = 0
    #: The trainer waits this long at most (its syncTimeout left): the check-in expires this
    #: long after the block that holds it, unless the round has closed (0: never).
    wait_ms: int = 0
    #: The contract's run (RESET CONTRACT starts the next): a round of an earlier run is over,
    #: and the same report in a later run is a new transaction.
    generation: int = 0


@dataclass(frozen=True)
class CheckOut(Message, tag=0x9C):
    """An SL node withdraws its check-in from a round still open: the trainer session it was
    for went away (disconnected). Only the check-in of that ``session`` is taken back."""

    contract: str
    round: int
    session: int
    reason: str = ""


@dataclass(frozen=True)
class Merged(Message, tag=0x97):
    """A participant's merged root for one attempt of a round."""

    contract: str
    round: int
    attempt: int
    root: bytes
    #: The contract's run (RESET CONTRACT starts the next): a round of an earlier run is over,
    #: and the same report in a later run is a new transaction.
    generation: int = 0


@dataclass(frozen=True)
class Exclude(Message, tag=0x98):
    """A participant reports a contributor whose chunks did not match its commitment."""

    contract: str
    round: int
    attempt: int
    culprit: str
    reason: str
    #: The contract's run (RESET CONTRACT starts the next): a round of an earlier run is over,
    #: and the same report in a later run is a new transaction.
    generation: int = 0


@dataclass(frozen=True)
class PerfData(Message, tag=0x99):
    """HPE's PERFDATA: a node's loss and metric after a round, and its progress."""

    contract: str
    round: int
    loss: float
    metric: float
    epochs_done: int
    epochs_total: int
    #: The contract's run (RESET CONTRACT starts the next): a round of an earlier run is over,
    #: and the same report in a later run is a new transaction.
    generation: int = 0


@dataclass(frozen=True)
class Heartbeat(Message, tag=0x9A):
    """Proof of life; it also gives the ledger a block to run its grace periods and deadlines
    in. ``round``, ``attempt`` and ``at_ms`` make each heartbeat a distinct transaction."""

    contract: str = ""
    round: int = 0
    attempt: int = 0
    at_ms: int = 0


@dataclass(frozen=True)
class Leave(Unique, Message, tag=0x9B):
    """Leave the registry; an SN member also gives up its validator seat (two heights later,
    the way seats are added). ``node`` names another member to remove (an operator's, swci,
    for a dead node); empty: the sender itself. The last validator seat is never removed."""

    node: str = ""
    reason: str = ""
