"""The vote keeper: every vote of one height, tallied per round and kind.

Theory of operation (after CometBFT's ``types/vote_set.go`` and malachite's keeper)
------------------------------------------------------------------------------------
A vote is checked in order of increasing cost, the signature last:

1. its height is the keeper's, its round is within ``round_window`` of the current round
   (memory stays bounded however far ahead a peer claims to be);
2. its validator is in this height's set and its value is nil or a 32-byte hash;
3. an identical vote (same signature) already counted is a *duplicate*: ignored, no crypto;
4. the signature over the vote's sign-bytes (chain id included) must verify;
5. a second, different vote by the same validator for the same (round, kind) is
   *equivocation*: kept as :class:`Evidence` (never an exception) and counted for its value
   too, as the paper counts messages: a byzantine validator may then be in two quorums,
   which the f < n/3 bound already allows for (CometBFT reaches the same with its
   peer-claimed majorities). Without this, honest nodes that saw the two halves of an
   equivocation could never agree on a polka, and a lock could stall the chain for good.
   At most ``VALUES_PER_VOTER_MAX`` values per validator, round and kind are kept.

A validator's power counts once in the tally of each (round, kind, value) it voted for, and
once in the tally of (round, kind) whatever it voted. Quorum arithmetic is on integers: a
quorum is more than 2/3 of the total power (``3 * power > 2 * total``), "f+1" is more than
1/3. Each threshold a vote makes a tally cross is reported once, as a :class:`Threshold`,
from :meth:`VoteKeeper.add`.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from dataclasses import dataclass

from swarmlearn.consensus.tendermint.crypto import Verifier
from swarmlearn.consensus.tendermint.types import Evidence, ValidatorSet, Vote, VoteType

HASH_BYTES = 32
ROUND_WINDOW = 64
VALUES_PER_VOTER_MAX = 4


class Added(enum.Enum):
    COUNTED = "counted"
    DUPLICATE = "duplicate"
    EQUIVOCATION = "equivocation"
    INVALID = "invalid"


class ThresholdKind(enum.Enum):
    QUORUM_VALUE = "quorum for a value"  # 2f+1 for one value (a block hash or nil)
    QUORUM_ANY = "quorum of any votes"  # 2f+1 in total
    ONE_HONEST_ROUND = "f+1 in a round"  # f+1 validators voted (any kind) in this round


@dataclass(frozen=True)
class Threshold:
    kind: ThresholdKind
    round: int
    vote_kind: VoteType | None = None
    value: bytes | None = None


@dataclass(frozen=True)
class AddResult:
    added: Added
    thresholds: tuple[Threshold, ...] = ()
    reason: str = ""


class VoteKeeper:
    def __init__(
        self,
        chain_id: str,
        height: int,
        validators: ValidatorSet,
        verifier: Verifier,
        round_window: int = ROUND_WINDOW,
    ) -> None:
        self.chain_id = chain_id
        self.height = height
        self.validators = validators
        self.verifier = verifier
        self.round_window = round_window
        self.evidence: list[Evidence] = []
        self._votes: dict[tuple[int, VoteType, str], list[Vote]] = {}
        self._value_power: dict[tuple[int, VoteType, bytes | None], int] = defaultdict(int)
        self._kind_power: dict[tuple[int, VoteType], int] = defaultdict(int)
        self._round_voters: dict[int, set[str]] = defaultdict(set)
        self._emitted: set[Threshold] = set()

    def add(self, vote: Vote, current_round: int) -> AddResult:
        reason = self._precheck(vote, current_round)
        if reason:
            return AddResult(Added.INVALID, reason=reason)
        key = (vote.round, vote.kind, vote.validator)
        known = self._votes.get(key, [])
        if any(k.signature == vote.signature and k.value == vote.value for k in known):
            return AddResult(Added.DUPLICATE)
        public_key = self.validators.by_node[vote.validator].public_key
        if not self.verifier.verify(public_key, vote.signature, vote.sign_bytes(self.chain_id)):
            return AddResult(Added.INVALID, reason="bad signature")
        if any(k.value == vote.value for k in known):
            return AddResult(Added.DUPLICATE)  # the same vote, signed again (ECDSA)
        if len(known) >= VALUES_PER_VOTER_MAX:
            return AddResult(Added.INVALID, reason=f"{vote.validator} sent too many values")
        self._votes[key] = [*known, vote]
        thresholds = self._count(vote, first=not known)
        if known:
            self.evidence.append(Evidence(known[0], vote))
            return AddResult(Added.EQUIVOCATION, thresholds, f"{vote.validator} equivocated")
        return AddResult(Added.COUNTED, thresholds)

    def _precheck(self, vote: Vote, current_round: int) -> str:
        if vote.height != self.height:
            return f"height {vote.height}, keeper is at {self.height}"
        if not 0 <= vote.round <= current_round + self.round_window:
            return f"round {vote.round} outside 0..{current_round + self.round_window}"
        if vote.validator not in self.validators:
            return f"{vote.validator!r} is not a validator at height {self.height}"
        if vote.value is not None and len(vote.value) != HASH_BYTES:
            return "value is neither nil nor a 32-byte hash"
        return ""

    def _count(self, vote: Vote, *, first: bool) -> tuple[Threshold, ...]:
        power = self.validators.power(vote.validator)
        value_key = (vote.round, vote.kind, vote.value)
        kind_key = (vote.round, vote.kind)
        self._value_power[value_key] += power
        if first:
            self._kind_power[kind_key] += power
        voters = self._round_voters[vote.round]
        voters.add(vote.validator)
        crossed = []
        if self.validators.is_quorum(self._value_power[value_key]):
            crossed.append(Threshold(ThresholdKind.QUORUM_VALUE, vote.round, vote.kind, vote.value))
        if self.validators.is_quorum(self._kind_power[kind_key]):
            crossed.append(Threshold(ThresholdKind.QUORUM_ANY, vote.round, vote.kind))
        if self.validators.is_one_honest(sum(self.validators.power(v) for v in voters)):
            crossed.append(Threshold(ThresholdKind.ONE_HONEST_ROUND, vote.round))
        fresh = tuple(t for t in crossed if t not in self._emitted)
        self._emitted.update(fresh)
        return fresh

    # ------------------------------------------------------------ queries

    def power_for(self, round_: int, kind: VoteType, value: bytes | None) -> int:
        return self._value_power.get((round_, kind, value), 0)

    def has_quorum_for(self, round_: int, kind: VoteType, value: bytes | None) -> bool:
        return self.validators.is_quorum(self.power_for(round_, kind, value))

    def has_quorum_any(self, round_: int, kind: VoteType) -> bool:
        return self.validators.is_quorum(self._kind_power.get((round_, kind), 0))

    def has_one_honest(self, round_: int) -> bool:
        voters = self._round_voters.get(round_, ())
        return self.validators.is_one_honest(sum(self.validators.power(v) for v in voters))

    def rounds(self) -> list[int]:
        return sorted(self._round_voters)

    def votes(self, round_: int | None = None) -> list[Vote]:
        """Counted votes (of one round, or all), in a deterministic order."""
        chosen = [
            v
            for (r, _, _), votes in self._votes.items()
            for v in votes
            if round_ is None or r == round_
        ]
        return sorted(chosen, key=lambda v: (v.round, v.kind, v.validator, v.value or b""))

    def votes_for(self, round_: int, kind: VoteType, value: bytes | None) -> list[Vote]:
        return [v for v in self.votes(round_) if v.kind == kind and v.value == value]
