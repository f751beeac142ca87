"""malachite's driver tables, replayed against the round state machine.

Ported from circlefin/malachite ``code/crates/core-driver/tests/it/extra.rs`` (the test names
are malachite's): the tables over proposals and individual votes (those over polka and
commit certificates have no counterpart: this machine counts votes one by one). Three
validators v1, v2, v3 with the tables' powers (usually 2, 3, 2: a quorum is 5 of 7, f+1 is
3); each table names who "we" are and the proposer of each round.
As in malachite's driver tests, our own votes are not counted unless a row feeds them.

Two differences of vocabulary, not of behaviour: malachite's driver emits ``NewRound(r)``
and takes a ``NewRound`` input before it schedules the propose timeout; our machine enters
the round at once, so those two rows are one (``ScheduleTimeout(PROPOSE, r)`` or
``Propose``). And ``Decide`` carries the round of the commit, where malachite gives the
round the node was in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from swarmlearn.consensus.tendermint.crypto import SimVerifier
from swarmlearn.consensus.tendermint.machine import (
    CastVote,
    Decide,
    Machine,
    Output,
    Propose,
    Received,
    ScheduleTimeout,
)
from swarmlearn.consensus.tendermint.types import Block, Step, ValidatorSet, VoteType
from swarmlearn.consensus.tendermint.votekeeper import Added, VoteKeeper
from tests.consensus_helpers import CHAIN, block, proposal, validator_set, vote
from tests.test_consensus_machine import Prop, Start  # the same steps as the machine tables

PV, PC = VoteType.PREVOTE, VoteType.PRECOMMIT
V1, V2, V3 = "a", "b", "c"  # malachite's v1, v2, v3
VALUE1, VALUE2 = block(tag=9999), block(tag=42)
OTHER = block(tag=8888)


class TableValidators(ValidatorSet):
    """The tables name the proposer of each round."""

    def __init__(self, powers: tuple[int, int, int], proposers: dict[int, str]) -> None:
        named = dict(zip((V1, V2, V3), powers, strict=True))
        super().__init__(validator_set((V1, V2, V3), named).validators)
        self.proposers = proposers

    def proposer(self, height: int, round_: int) -> str:
        return self.proposers[round_]


@dataclass(frozen=True)
class Vote:
    node: str
    kind: VoteType
    round: int
    value: Block | None


@dataclass(frozen=True)
class Timeout:
    step: Step
    round: int


@dataclass(frozen=True)
class Row:
    given: Start | Prop | Vote | Timeout
    outputs: list[Output]
    state: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Table:
    me: str
    powers: tuple[int, int, int]
    proposers: dict[int, str]
    rows: list[Row]


class Harness:
    def __init__(self, table: Table) -> None:
        self.validators = TableValidators(table.powers, table.proposers)
        self.keeper = VoteKeeper(CHAIN, 1, self.validators, SimVerifier())
        self.machine = Machine(1, table.me, self.keeper)

    def apply(self, given: Start | Prop | Vote | Timeout) -> list[Output]:
        m = self.machine
        match given:
            case Start(round_):
                return m.start(round_)
            case Prop(round_, blk, vr, valid):
                proposer = self.validators.proposer(1, round_)
                return m.on_proposal(Received(proposal(proposer, round_, blk, vr), valid))
            case Vote(node, kind, round_, value):
                cast = vote(node, kind, round_, value.hash if value else None)
                added = self.keeper.add(cast, max(m.state.round, 0)).added
                return m.on_vote() if added in (Added.COUNTED, Added.EQUIVOCATION) else []
            case Timeout(step, round_):
                return m.on_timeout(step, round_)
        raise AssertionError(given)

    def state(self) -> dict[str, Any]:
        s = self.machine.state
        return {
            "round": s.round,
            "step": s.step,
            "locked": (s.locked_round, s.locked_value.hash if s.locked_value else None),
            "valid": (s.valid_round, s.valid_value.hash if s.valid_value else None),
            "decided": s.decision.hash if s.decision else None,
        }


def run_table(table: Table) -> None:
    harness = Harness(table)
    for index, row in enumerate(table.rows):
        outputs = harness.apply(row.given)
        assert outputs == row.outputs, f"row {index}: {row.given}"
        state = harness.state()
        for key, expected in row.state.items():
            assert state[key] == expected, f"row {index}: {key}"


def locked_and_valid(round_: int, value: Block) -> dict[str, Any]:
    return {"locked": (round_, value.hash), "valid": (round_, value.hash)}


NOTHING: dict[str, Any] = {"locked": (-1, None), "valid": (-1, None), "decided": None}
START_V1 = Row(Start(0), [ScheduleTimeout(Step.PROPOSE, 0)], {"round": 0, "step": Step.PROPOSE})

TABLES: dict[str, Table] = {
    "driver_steps_decide_current_with_no_locked_no_valid": Table(
        V3,
        (2, 3, 2),
        {0: V1},
        [
            START_V1,
            Row(Vote(V1, PC, 0, VALUE1), [], {"step": Step.PROPOSE}),
            Row(Vote(V2, PC, 0, VALUE1), [ScheduleTimeout(Step.PRECOMMIT, 0)], NOTHING),
            Row(Prop(0, VALUE1), [Decide(0, VALUE1)], {"decided": VALUE1.hash}),
        ],
    ),
    "driver_steps_decide_previous_with_no_locked_no_valid": Table(
        V3,
        (2, 3, 2),
        {0: V1, 1: V2},
        [
            START_V1,
            Row(Timeout(Step.PROPOSE, 0), [CastVote(PV, 0, None)], {"step": Step.PREVOTE}),
            Row(Vote(V1, PV, 0, VALUE1), []),
            Row(Vote(V2, PV, 0, VALUE1), [ScheduleTimeout(Step.PREVOTE, 0)]),
            Row(Vote(V1, PC, 0, VALUE1), []),
            Row(Vote(V2, PC, 0, VALUE1), [ScheduleTimeout(Step.PRECOMMIT, 0)]),
            Row(Timeout(Step.PRECOMMIT, 0), [ScheduleTimeout(Step.PROPOSE, 1)], {"round": 1}),
            Row(Prop(0, VALUE1), [Decide(0, VALUE1)], {"decided": VALUE1.hash}),
        ],
    ),
    "driver_steps_decide_previous_with_locked_and_valid": Table(
        V3,
        (2, 3, 2),
        {0: V1, 1: V2},
        [
            START_V1,
            Row(Timeout(Step.PROPOSE, 0), [CastVote(PV, 0, None)]),
            Row(Vote(V1, PV, 0, VALUE1), []),
            Row(Vote(V2, PV, 0, VALUE1), [ScheduleTimeout(Step.PREVOTE, 0)]),
            Row(  # L37-L43: the proposal arrives after its polka, still in prevote
                Prop(0, VALUE1),
                [CastVote(PC, 0, VALUE1.hash)],
                {"step": Step.PRECOMMIT, **locked_and_valid(0, VALUE1)},
            ),
            Row(  # f+1 (v2 alone) in round 1: skip to it
                Vote(V2, PC, 1, VALUE1),
                [ScheduleTimeout(Step.PROPOSE, 1)],
                {"round": 1, "step": Step.PROPOSE, **locked_and_valid(0, VALUE1)},
            ),
            Row(Vote(V1, PC, 0, VALUE1), []),
            Row(Vote(V2, PC, 0, VALUE1), [Decide(0, VALUE1)], {"decided": VALUE1.hash}),
        ],
    ),
    "driver_steps_polka_previous_with_locked": Table(
        V2,
        (2, 2, 3),
        {0: V1, 1: V2},
        [
            START_V1,
            Row(Prop(0, VALUE1), [CastVote(PV, 0, VALUE1.hash)], {"step": Step.PREVOTE}),
            Row(Vote(V3, PV, 0, VALUE1), []),
            Row(
                Vote(V1, PV, 0, VALUE1),
                [CastVote(PC, 0, VALUE1.hash)],
                {"step": Step.PRECOMMIT, **locked_and_valid(0, VALUE1)},
            ),
            Row(  # f+1 for round 1 from v3; we propose round 1 with our valid value
                Vote(V3, PC, 1, OTHER),
                [Propose(1, VALUE1, 0)],
                {"round": 1, "step": Step.PROPOSE, **locked_and_valid(0, VALUE1)},
            ),
            Row(
                Prop(1, VALUE1, valid_round=0),
                [CastVote(PV, 1, VALUE1.hash)],
                {"step": Step.PREVOTE, **locked_and_valid(0, VALUE1)},
            ),
        ],
    ),
    "driver_steps_polka_previous_not_locked_vote_last_l30": Table(
        V2,
        (2, 2, 3),
        {0: V1, 1: V3},
        [
            START_V1,
            Row(Prop(0, VALUE1), [CastVote(PV, 0, VALUE1.hash)]),
            Row(Vote(V2, PV, 0, VALUE1), []),
            Row(Prop(1, VALUE1, valid_round=0), [], {"round": 0}),  # v3, round 1, vr 0
            Row(Vote(V3, PC, 1, OTHER), [ScheduleTimeout(Step.PROPOSE, 1)], {"round": 1}),
            Row(  # the polka of round 0 completes: L28-L30 prevotes the re-proposal
                Vote(V3, PV, 0, VALUE1),
                [CastVote(PV, 1, VALUE1.hash)],
                {"step": Step.PREVOTE, "locked": (-1, None)},
            ),
        ],
    ),
    "driver_steps_polka_nil_and_timeout_propose": Table(
        V3,
        (2, 3, 2),
        {0: V1},
        [
            START_V1,
            Row(Vote(V1, PV, 0, None), []),
            Row(Vote(V2, PV, 0, None), [], {"step": Step.PROPOSE}),  # polka nil, in propose
            Row(
                Timeout(Step.PROPOSE, 0),
                [CastVote(PV, 0, None), CastVote(PC, 0, None)],  # L57, then L44
                {"step": Step.PRECOMMIT},
            ),
        ],
    ),
    "driver_steps_polka_value_then_proposal": Table(
        V3,
        (2, 3, 2),
        {0: V1},
        [
            START_V1,
            Row(Vote(V1, PV, 0, VALUE1), []),
            Row(Vote(V2, PV, 0, VALUE1), [], {"step": Step.PROPOSE}),
            Row(
                Prop(0, VALUE1),
                [CastVote(PV, 0, VALUE1.hash), CastVote(PC, 0, VALUE1.hash)],  # L22, L36
                {"step": Step.PRECOMMIT, **locked_and_valid(0, VALUE1)},
            ),
        ],
    ),
    "driver_steps_polka_any_then_proposal_other": Table(
        V3,
        (2, 3, 2),
        {0: V1},
        [
            START_V1,
            Row(Vote(V1, PV, 0, None), []),
            Row(Vote(V2, PV, 0, VALUE1), [], {"step": Step.PROPOSE}),
            Row(
                Prop(0, VALUE1),
                [CastVote(PV, 0, VALUE1.hash), ScheduleTimeout(Step.PREVOTE, 0)],  # L22, L34
                {"step": Step.PREVOTE},
            ),
        ],
    ),
    "driver_equivocate_vote": Table(
        V3,
        (2, 3, 2),
        {0: V1},
        [
            START_V1,
            Row(Prop(0, VALUE1), [CastVote(PV, 0, VALUE1.hash)]),
            Row(Vote(V2, PV, 0, VALUE1), []),
            Row(Vote(V2, PV, 0, VALUE2), [], {"step": Step.PREVOTE}),  # v2 equivocates
            Row(
                Vote(V1, PV, 0, VALUE1),
                [CastVote(PC, 0, VALUE1.hash)],
                {"step": Step.PRECOMMIT, **locked_and_valid(0, VALUE1)},
            ),
        ],
    ),
    "driver_equivocating_proposer_others_vote_first": Table(
        V3,
        (2, 3, 2),
        {0: V1},
        [
            START_V1,
            Row(Prop(0, VALUE1), [CastVote(PV, 0, VALUE1.hash)], {"step": Step.PREVOTE}),
            Row(Prop(0, VALUE2), [], {"step": Step.PREVOTE}),  # the proposer's second
            Row(Vote(V2, PV, 0, VALUE1), []),
            Row(
                Vote(V1, PV, 0, VALUE1),
                [CastVote(PC, 0, VALUE1.hash)],
                {"step": Step.PRECOMMIT, **locked_and_valid(0, VALUE1)},
            ),
        ],
    ),
    "driver_equivocating_proposer_others_vote_second": Table(
        V3,
        (2, 3, 2),
        {0: V1},
        [
            START_V1,
            Row(Prop(0, VALUE1), [CastVote(PV, 0, VALUE1.hash)], {"step": Step.PREVOTE}),
            Row(Vote(V3, PV, 0, VALUE1), []),  # our own prevote
            Row(Prop(0, VALUE2), [], {"step": Step.PREVOTE}),  # no second prevote
            Row(Vote(V2, PV, 0, VALUE2), [ScheduleTimeout(Step.PREVOTE, 0)]),
            Row(  # L36 on the second proposal: lock it and precommit it
                Vote(V1, PV, 0, VALUE2),
                [CastVote(PC, 0, VALUE2.hash)],
                {"step": Step.PRECOMMIT, **locked_and_valid(0, VALUE2)},
            ),
            Row(Vote(V2, PC, 0, VALUE2), []),
            Row(  # L49 on the second proposal: decide what the quorum precommitted
                Vote(V1, PC, 0, VALUE2),
                [Decide(0, VALUE2)],
                {"decided": VALUE2.hash, **locked_and_valid(0, VALUE2)},
            ),
        ],
    ),
    "driver_equivocating_proposer_valid_value": Table(
        V3,
        (2, 3, 2),
        {0: V1},
        [
            START_V1,
            Row(Prop(0, VALUE1), [CastVote(PV, 0, VALUE1.hash)]),
            Row(Vote(V3, PV, 0, VALUE1), []),
            Row(Vote(V2, PV, 0, VALUE2), [ScheduleTimeout(Step.PREVOTE, 0)]),
            Row(Prop(0, VALUE2), [], {"step": Step.PREVOTE}),
            Row(Timeout(Step.PREVOTE, 0), [CastVote(PC, 0, None)], {"step": Step.PRECOMMIT}),
            Row(  # L36 in precommit: only the valid value moves, to the second proposal
                Vote(V1, PV, 0, VALUE2),
                [],
                {"step": Step.PRECOMMIT, "locked": (-1, None), "valid": (0, VALUE2.hash)},
            ),
        ],
    ),
    "driver_steps_polka_previous_invalid_proposal": Table(
        V3,
        (2, 3, 2),
        {0: V1, 1: V2},
        [
            START_V1,
            Row(Timeout(Step.PROPOSE, 0), [CastVote(PV, 0, None)]),
            Row(Vote(V1, PV, 0, VALUE1), []),
            Row(Vote(V2, PV, 0, VALUE1), [ScheduleTimeout(Step.PREVOTE, 0)]),
            Row(Vote(V2, PV, 1, VALUE1), [ScheduleTimeout(Step.PROPOSE, 1)], {"round": 1}),
            Row(  # L28-L33: a polka in round 0 justifies it, but it is invalid
                Prop(1, VALUE1, valid_round=0, valid=False),
                [CastVote(PV, 1, None)],
                {"step": Step.PREVOTE},
            ),
        ],
    ),
    "polka_nil_and_prevote_step_precommit_nil": Table(
        V3,
        (2, 3, 2),
        {0: V1},
        [
            START_V1,
            Row(Vote(V2, PV, 0, None), []),
            Row(Vote(V3, PV, 0, None), [], {"step": Step.PROPOSE}),  # polka nil, in propose
            Row(Vote(V2, PC, 0, None), []),
            Row(Vote(V3, PC, 0, None), [ScheduleTimeout(Step.PRECOMMIT, 0)]),  # L47
            Row(
                Timeout(Step.PROPOSE, 0),
                [CastVote(PV, 0, None), CastVote(PC, 0, None)],
                {"step": Step.PRECOMMIT},
            ),
        ],
    ),
    "no_precommit_after_polka_and_proposal_different_values": Table(
        V3,
        (2, 3, 2),
        {0: V1},
        [
            START_V1,
            Row(Timeout(Step.PROPOSE, 0), [CastVote(PV, 0, None)]),
            Row(Vote(V1, PV, 0, VALUE1), []),
            Row(Vote(V2, PV, 0, VALUE1), [ScheduleTimeout(Step.PREVOTE, 0)]),
            Row(Prop(0, VALUE2), [], {"step": Step.PREVOTE, **NOTHING}),  # the polka is for v
        ],
    ),
    "no_valid_update_after_polka_and_proposal_different_values": Table(
        V3,
        (2, 3, 2),
        {0: V1},
        [
            START_V1,
            Row(Timeout(Step.PROPOSE, 0), [CastVote(PV, 0, None)]),
            Row(Vote(V1, PV, 0, VALUE1), []),
            Row(Vote(V2, PV, 0, VALUE1), [ScheduleTimeout(Step.PREVOTE, 0)]),
            Row(Timeout(Step.PREVOTE, 0), [CastVote(PC, 0, None)], {"step": Step.PRECOMMIT}),
            Row(Prop(0, VALUE2), [], {"step": Step.PRECOMMIT, **NOTHING}),
        ],
    ),
    "no_prevote_for_proposal_with_polka_for_different_value": Table(
        V3,
        (2, 3, 2),
        {0: V1, 1: V2},
        [
            START_V1,
            Row(Vote(V1, PV, 0, VALUE1), []),
            Row(Vote(V2, PV, 0, VALUE1), [], {"step": Step.PROPOSE}),
            Row(Vote(V2, PV, 1, OTHER), [ScheduleTimeout(Step.PROPOSE, 1)], {"round": 1}),
            Row(  # round 0's polka is for v, not v': no L28 prevote, wait for the timeout
                Prop(1, VALUE2, valid_round=0),
                [],
                {"step": Step.PROPOSE, **NOTHING},
            ),
        ],
    ),
}


@pytest.mark.parametrize("table", TABLES.values(), ids=TABLES.keys())
def test_malachite_driver_table(table: Table) -> None:
    run_table(table)


def test_an_equivocating_proposer_is_kept_to_a_few_proposals_per_round() -> None:
    table = Table(V3, (2, 3, 2), {0: V1}, [START_V1])
    harness = Harness(table)
    harness.apply(Start(0))
    for tag in range(10):
        harness.apply(Prop(0, block(tag=100 + tag)))
    kept = harness.machine.proposals[0]
    assert [k.proposal.block for k in kept] == [block(tag=100 + t) for t in range(4)]
