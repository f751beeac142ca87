"""Consensus types: steps, votes, proposals, blocks, commits, validator sets, and sign-bytes.

Every message here is a wire :class:`Message`, so it travels, hashes and signs the same way
everywhere: what is signed is the canonical CBOR of a *sign-bytes* message that always carries
the chain id (a vote for one chain can never count on another). Heights start at 1, rounds at
0; ``NIL`` (``None``) is the vote for no block.
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

from swarmlearn.p2p.wire import Message, encode_header

BlockHash = bytes
NIL: None = None


class Step(enum.IntEnum):
    """Ordered, so (height, round, step) compare as tuples and stale timeouts drop out."""

    PROPOSE = 0
    PREVOTE = 1
    PRECOMMIT = 2


class VoteType(enum.IntEnum):
    PREVOTE = 1
    PRECOMMIT = 2


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# ---------------------------------------------------------------- validators


@dataclass(frozen=True)
class Validator(Message, tag=0x40):
    node: str  # the node id (a peer id's printed form on real nodes)
    public_key: bytes  # SubjectPublicKeyInfo DER (or a simulator key)
    power: int


POWER_MAX = 1000


class ValidatorSet:
    """Validators sorted by node id, with integer quorum arithmetic and proposer selection."""

    def __init__(self, validators: Iterable[Validator]) -> None:
        ordered = sorted(validators, key=lambda v: v.node)
        if not ordered:
            raise ValueError("a validator set needs at least one validator")
        if len({v.node for v in ordered}) != len(ordered):
            raise ValueError("duplicate validator")
        for validator in ordered:
            if type(validator.power) is not int or not 0 < validator.power <= POWER_MAX:
                raise ValueError(f"validator {validator.node}: power must be in 1..{POWER_MAX}")
        self.validators: tuple[Validator, ...] = tuple(ordered)
        self.by_node = {v.node: v for v in ordered}
        #: Each validator's place in the set's order (a status's vote bits are by it).
        self.position = {v.node: i for i, v in enumerate(ordered)}
        self.total_power = sum(v.power for v in ordered)

    def __len__(self) -> int:
        return len(self.validators)

    def __contains__(self, node: object) -> bool:
        return node in self.by_node

    def power(self, node: str) -> int:
        found = self.by_node.get(node)
        return found.power if found is not None else 0

    def is_quorum(self, power: int) -> bool:
        """More than 2/3 of the total voting power (integers only)."""
        return 3 * power > 2 * self.total_power

    def is_one_honest(self, power: int) -> bool:
        """More than 1/3 (f+1): at least one honest validator is among them."""
        return 3 * power > self.total_power

    @cached_property
    def hash(self) -> bytes:
        return digest(b"".join(encode_header(v) for v in self.validators))

    @cached_property
    def _schedule(self) -> tuple[str, ...]:
        """Smooth weighted round-robin over one cycle: each validator as often as its power
        (divided by the common divisor), interleaved rather than in runs."""
        divisor = math.gcd(*(v.power for v in self.validators))
        weights = [v.power // divisor for v in self.validators]
        current = [0] * len(weights)
        total = sum(weights)
        schedule = []
        for _ in range(total):
            for index, weight in enumerate(weights):
                current[index] += weight
            best = max(range(len(weights)), key=lambda i: (current[i], -i))
            current[best] -= total
            schedule.append(self.validators[best].node)
        return tuple(schedule)

    def proposer(self, height: int, round_: int) -> str:
        schedule = self._schedule
        return schedule[(height + round_) % len(schedule)]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ValidatorSet) and other.validators == self.validators

    def __hash__(self) -> int:
        return hash(self.validators)

    def __repr__(self) -> str:
        return f"ValidatorSet({len(self)} validators, power {self.total_power})"


# ---------------------------------------------------------------- blocks


@dataclass(frozen=True)
class BlockHeader(Message, tag=0x41):
    chain_id: str
    height: int
    time_ms: int
    proposer: str
    previous_hash: bytes
    tx_root: bytes
    app_hash: bytes  # the application state after executing the previous block
    validators_hash: bytes
    last_commit_hash: bytes = b""  # Commit.hash of the block's last_commit (b"" at height 1)


@dataclass(frozen=True)
class Block(Message, tag=0x42):
    """A block carries the commit of the previous height: its vote times fix this block's
    time (BFT time, see :meth:`Commit.median_time_ms`), the same for everyone who checks it."""

    header: BlockHeader
    txs: tuple[bytes, ...]
    last_commit: Commit | None = None  # None at height 1 only

    @cached_property
    def hash(self) -> BlockHash:
        return digest(encode_header(self.header))


def tx_root(txs: Sequence[bytes]) -> bytes:
    return digest(b"".join(digest(tx) for tx in txs))


# ---------------------------------------------------------------- sign-bytes


@dataclass(frozen=True)
class VoteSignBytes(Message, tag=0x4E):
    chain_id: str
    kind: VoteType
    height: int
    round: int
    value: bytes | None
    time_ms: int


@dataclass(frozen=True)
class ProposalSignBytes(Message, tag=0x4F):
    chain_id: str
    height: int
    round: int
    valid_round: int
    value: bytes


# ---------------------------------------------------------------- votes, proposals, commits


@dataclass(frozen=True)
class Vote(Message, tag=0x43):
    kind: VoteType
    height: int
    round: int
    value: bytes | None  # the block hash, or None for nil
    validator: str
    signature: bytes
    #: The voter's clock when it voted (Unix ms, signed); a precommit for a block is clamped
    #: to after that block's time. The next block's time is the median of its commit's.
    time_ms: int = 0

    def sign_bytes(self, chain_id: str) -> bytes:
        signed = VoteSignBytes(
            chain_id, self.kind, self.height, self.round, self.value, self.time_ms
        )
        return encode_header(signed)


@dataclass(frozen=True)
class Proposal(Message, tag=0x44):
    height: int
    round: int
    valid_round: int  # -1, or the round of the polka that justifies re-proposing this block
    block: Block
    proposer: str
    signature: bytes

    def sign_bytes(self, chain_id: str) -> bytes:
        signed = ProposalSignBytes(
            chain_id, self.height, self.round, self.valid_round, self.block.hash
        )
        return encode_header(signed)


@dataclass(frozen=True)
class CommitSig(Message, tag=0x45):
    validator: str
    signature: bytes
    time_ms: int = 0


@dataclass(frozen=True)
class Commit(Message, tag=0x46):
    """More than 2/3 of precommits for one block in one round: proof that it was decided."""

    height: int
    round: int
    value: bytes
    signatures: tuple[CommitSig, ...]

    def votes(self) -> list[Vote]:
        return [
            Vote(
                VoteType.PRECOMMIT,
                self.height,
                self.round,
                self.value,
                s.validator,
                s.signature,
                s.time_ms,
            )
            for s in self.signatures
        ]

    @cached_property
    def hash(self) -> bytes:
        return digest(encode_header(self))

    def median_time_ms(self, validators: ValidatorSet) -> int:
        """BFT time: the voting-power-weighted median of the precommit times (CometBFT's
        ``MedianTime``). The smallest time whose votes, with every earlier one, hold more
        than half of the commit's power: the commit holds more than 2/3 of all power and
        the faulty less than 1/3, so more than half of it, on either side of the median, is
        honest, and no faulty clock can move it past an honest one."""
        weighted = sorted((s.time_ms, validators.power(s.validator)) for s in self.signatures)
        total = sum(power for _, power in weighted)
        below = 0
        for time_ms, power in weighted:
            below += power
            if 2 * below > total:
                return time_ms
        raise ValueError("an empty commit has no time")


# ---------------------------------------------------------------- gossip and catch-up


@dataclass(frozen=True)
class Status(Message, tag=0x47):
    """Where a node is; peers answer with what it may have missed. What it already holds of
    ``round`` is said too (CometBFT's VoteSetBits): the proposal, and a bit per validator of
    the height's set (in its order) for each kind of vote; the answer leaves those out. The
    defaults say "nothing": everything is sent (a request for a missing proposal)."""

    height: int
    round: int
    step: Step
    proposal: bool = False
    prevotes: bytes = b""
    precommits: bytes = b""


@dataclass(frozen=True)
class BlockRequest(Message, tag=0x48):
    height: int


@dataclass(frozen=True)
class BlockResponse(Message, tag=0x49):
    block: Block
    commit: Commit


@dataclass(frozen=True)
class Tx(Message, tag=0x4A):
    data: bytes


@dataclass(frozen=True)
class Evidence(Message, tag=0x4B):
    """Two conflicting signed votes by one validator (equivocation)."""

    first: Vote
    second: Vote
