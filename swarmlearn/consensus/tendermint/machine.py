"""The Tendermint round state machine of one height (pure: no signing, no I/O, no clock).

Theory of operation
-------------------
This is Algorithm 1 of Buchman, Kwon and Milosevic, "The latest gossip on BFT consensus"
(arXiv:1807.04938); comments cite its line numbers. The machine holds the per-height state of
the paper (``round_p``, ``step_p``, locked and valid value and round, the decision) and two
views it does not own: the :class:`VoteKeeper` of the height and the proposals received, each
already checked by the driver (signature, sender is the round's proposer, and ``valid(v)``).

A byzantine proposer may sign several proposals for one round. The machine keeps up to
``PROPOSALS_PER_ROUND_MAX`` of them per round (in the order received): the prevote rules
(lines 22-33) look at the first only, but lines 36-43 (polka) and 49-54 (decision) apply to
every one, so a node that saw the "wrong" proposal first still locks, updates its valid
value and decides what a quorum voted for (as malachite's driver does).

Every input (start, a proposal, a counted vote, a timeout) is followed by :meth:`_evaluate`,
which fires the paper's ``upon`` rules until none applies; "for the first time" rules keep a
set of the rounds they fired in. Outputs are intentions for the driver: :class:`Propose`
(sign and broadcast a proposal; ``block`` is None when the driver must build a new one: the
paper's ``getValue()``), :class:`CastVote`, :class:`ScheduleTimeout` and :class:`Decide`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from swarmlearn.consensus.tendermint.types import Block, Proposal, Step, VoteType
from swarmlearn.consensus.tendermint.votekeeper import VoteKeeper

PROPOSALS_PER_ROUND_MAX = 4


@dataclass(frozen=True)
class Propose:
    round: int
    block: Block | None  # None: build a new block (getValue)
    valid_round: int


@dataclass(frozen=True)
class CastVote:
    kind: VoteType
    round: int
    value: bytes | None


@dataclass(frozen=True)
class ScheduleTimeout:
    step: Step
    round: int


@dataclass(frozen=True)
class Decide:
    round: int
    block: Block


Output = Propose | CastVote | ScheduleTimeout | Decide


@dataclass(frozen=True)
class Received:
    """A proposal the driver checked: its signature, its sender, and whether valid(v)."""

    proposal: Proposal
    valid: bool


@dataclass
class RoundState:
    height: int
    round: int = -1  # -1: the height has not started
    step: Step = Step.PROPOSE
    locked_value: Block | None = None
    locked_round: int = -1
    valid_value: Block | None = None
    valid_round: int = -1
    decision: Block | None = None
    fired: set[tuple[str, int]] = field(default_factory=set)  # "for the first time" rules


class Machine:
    def __init__(self, height: int, me: str, keeper: VoteKeeper) -> None:
        self.me = me
        self.keeper = keeper
        self.state = RoundState(height)
        self.proposals: dict[int, list[Received]] = {}  # per round, first received first
        self._out: list[Output] = []

    # ------------------------------------------------------------ inputs

    def start(self, round_: int = 0) -> list[Output]:
        """Line 10: upon start do StartRound(0) (or a later round, after a replay)."""
        if self.state.round < 0:
            self._start_round(round_)
            self._evaluate()
        return self._flush()

    def on_proposal(self, received: Received) -> list[Output]:
        proposal = received.proposal
        kept = self.proposals.setdefault(proposal.round, [])
        held = any(k.proposal.block.hash == proposal.block.hash for k in kept)
        if not held and len(kept) < PROPOSALS_PER_ROUND_MAX:
            kept.append(received)
        if self.state.round >= 0:
            self._evaluate()
        return self._flush()

    def on_vote(self) -> list[Output]:
        """A vote was counted by the keeper: re-check the rules."""
        if self.state.round >= 0:
            self._evaluate()
        return self._flush()

    def on_timeout(self, step: Step, round_: int) -> list[Output]:
        s = self.state
        if s.decision is None and round_ == s.round:
            if step == Step.PROPOSE and s.step == Step.PROPOSE:  # lines 57-60
                self._vote(VoteType.PREVOTE, None, Step.PREVOTE)
            elif step == Step.PREVOTE and s.step == Step.PREVOTE:  # lines 61-64
                self._vote(VoteType.PRECOMMIT, None, Step.PRECOMMIT)
            elif step == Step.PRECOMMIT:  # lines 65-67
                self._start_round(s.round + 1)
            self._evaluate()
        return self._flush()

    # ------------------------------------------------------------ the algorithm

    def _start_round(self, round_: int) -> None:
        """Lines 11-21: StartRound(round)."""
        s = self.state
        s.round = round_  # line 12
        s.step = Step.PROPOSE  # line 13
        if self.keeper.validators.proposer(s.height, round_) == self.me:  # line 14
            if s.valid_value is not None:  # lines 15-16
                self._out.append(Propose(round_, s.valid_value, s.valid_round))
            else:  # line 17: getValue()
                self._out.append(Propose(round_, None, -1))
        else:
            self._out.append(ScheduleTimeout(Step.PROPOSE, round_))  # line 21

    def _vote(self, kind: VoteType, value: bytes | None, step: Step) -> None:
        self._out.append(CastVote(kind, self.state.round, value))
        self.state.step = step

    def _evaluate(self) -> None:
        while self.state.decision is None and self._fire_one():
            pass

    def _fire_one(self) -> bool:  # one branch per rule of the paper
        s, keeper = self.state, self.keeper
        kept = self.proposals.get(s.round, [])
        current = kept[0] if kept else None  # lines 22-33 act on the first proposal only
        # Lines 49-54: a proposal and 2f+1 precommits for it, in any round: decide.
        for round_, received in self.all_proposals():
            block = received.proposal.block
            if keeper.has_quorum_for(round_, VoteType.PRECOMMIT, block.hash) and received.valid:
                s.decision = block
                self._out.append(Decide(round_, block))
                return False
        # Lines 55-56: f+1 messages of a later round: skip to it.
        later = [r for r in keeper.rounds() if r > s.round and keeper.has_one_honest(r)]
        if later:
            self._start_round(max(later))
            return True
        if current is not None and s.step == Step.PROPOSE:
            block, vr = current.proposal.block, current.proposal.valid_round
            if vr == -1:  # lines 22-27
                ok = current.valid and (s.locked_round == -1 or s.locked_value == block)
                self._vote(VoteType.PREVOTE, block.hash if ok else None, Step.PREVOTE)
                return True
            if 0 <= vr < s.round and keeper.has_quorum_for(vr, VoteType.PREVOTE, block.hash):
                # lines 28-33
                ok = current.valid and (s.locked_round <= vr or s.locked_value == block)
                self._vote(VoteType.PREVOTE, block.hash if ok else None, Step.PREVOTE)
                return True
        polka = self._polka_proposal(kept)
        if (
            polka is not None and s.step >= Step.PREVOTE and self._first("polka-value", s.round)
        ):  # lines 36-43, for any proposal of the round
            block = polka.proposal.block
            if s.step == Step.PREVOTE:
                s.locked_value, s.locked_round = block, s.round  # lines 38-39
                self._vote(VoteType.PRECOMMIT, block.hash, Step.PRECOMMIT)  # lines 40-41
            s.valid_value, s.valid_round = block, s.round  # lines 42-43
            return True
        if s.step == Step.PREVOTE and keeper.has_quorum_for(s.round, VoteType.PREVOTE, None):
            self._vote(VoteType.PRECOMMIT, None, Step.PRECOMMIT)  # lines 44-46
            return True
        if (
            s.step == Step.PREVOTE
            and keeper.has_quorum_any(s.round, VoteType.PREVOTE)
            and self._first("timeout-prevote", s.round)
        ):  # lines 34-35 (after 36 and 44: a polka needs no wait)
            self._out.append(ScheduleTimeout(Step.PREVOTE, s.round))
            return True
        if keeper.has_quorum_any(s.round, VoteType.PRECOMMIT) and self._first(
            "timeout-precommit", s.round
        ):  # lines 47-48
            self._out.append(ScheduleTimeout(Step.PRECOMMIT, s.round))
            return True
        return False

    def _polka_proposal(self, kept: list[Received]) -> Received | None:
        """The valid proposal of the current round with 2f+1 prevotes for its block."""
        for received in kept:
            block_hash = received.proposal.block.hash
            if received.valid and self.keeper.has_quorum_for(
                self.state.round, VoteType.PREVOTE, block_hash
            ):
                return received
        return None

    def all_proposals(self) -> list[tuple[int, Received]]:
        """Every proposal kept, by round, in the order received within a round."""
        return [(r, k) for r, kept in sorted(self.proposals.items()) for k in kept]

    def holds(self, round_: int, block_hash: bytes) -> bool:
        return any(k.proposal.block.hash == block_hash for k in self.proposals.get(round_, []))

    def _first(self, rule: str, round_: int) -> bool:
        key = (rule, round_)
        if key in self.state.fired:
            return False
        self.state.fired.add(key)
        return True

    def _flush(self) -> list[Output]:
        out, self._out = self._out, []
        return out
