"""The round state machine as tables of steps: (input, expected outputs, expected state).

Families from CometBFT's consensus state tests: lock without a POL, relock, unlock on a later
POL, valid-block handling, commit from a previous round, skipping to a later round, and
halting without a quorum. Four validators a, b, c, d of power 1 (quorum 3, f+1 = 2); the
proposer of (height 1, round r) is "bcda"[r % 4].
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
from swarmlearn.consensus.tendermint.types import Block, Step, VoteType
from swarmlearn.consensus.tendermint.votekeeper import Added, VoteKeeper
from tests.consensus_helpers import CHAIN, block, proposal, validator_set, vote

PV, PC = VoteType.PREVOTE, VoteType.PRECOMMIT
B0, B1 = block(tag=0), block(tag=1)
PROPOSER = "bcda"


@dataclass(frozen=True)
class Start:
    round: int = 0


@dataclass(frozen=True)
class Prop:
    round: int
    block: Block
    valid_round: int = -1
    valid: bool = True


@dataclass(frozen=True)
class Votes:
    kind: VoteType
    round: int
    value: Block | None
    nodes: str


@dataclass(frozen=True)
class Timeout:
    step: Step
    round: int


@dataclass(frozen=True)
class Row:
    given: Start | Prop | Votes | Timeout
    outputs: list[Output]
    state: dict[str, Any] = field(default_factory=dict)


class Harness:
    """Feeds the machine like the core does: own votes go into the keeper and back in."""

    def __init__(self, me: str) -> None:
        self.me = me
        self.keeper = VoteKeeper(CHAIN, 1, validator_set(), SimVerifier())
        self.machine = Machine(1, me, self.keeper)

    def apply(self, given: Start | Prop | Votes | Timeout) -> list[Output]:
        m = self.machine
        match given:
            case Start(round_):
                return self._loop(m.start(round_))
            case Prop(round_, blk, vr, valid):
                signed = proposal(PROPOSER[round_ % 4], round_, blk, vr)
                return self._loop(m.on_proposal(Received(signed, valid)))
            case Votes(kind, round_, value, nodes):
                out: list[Output] = []
                for node in nodes:
                    v = vote(node, kind, round_, value.hash if value else None)
                    if self.keeper.add(v, max(m.state.round, 0)).added is Added.COUNTED:
                        out += self._loop(m.on_vote())
                return out
            case Timeout(step, round_):
                return self._loop(m.on_timeout(step, round_))
        raise AssertionError(given)

    def _loop(self, outputs: list[Output]) -> list[Output]:
        seen = list(outputs)
        for output in outputs:
            if isinstance(output, CastVote):
                own = vote(self.me, output.kind, output.round, output.value)
                if self.keeper.add(own, output.round).added is Added.COUNTED:
                    seen += self._loop(self.machine.on_vote())
        return seen

    def state(self) -> dict[str, Any]:
        s = self.machine.state
        return {
            "round": s.round,
            "step": s.step,
            "locked": (s.locked_round, s.locked_value.hash if s.locked_value else None),
            "valid": (s.valid_round, s.valid_value.hash if s.valid_value else None),
            "decided": s.decision.hash if s.decision else None,
        }


def run_table(me: str, rows: list[Row]) -> None:
    harness = Harness(me)
    for index, row in enumerate(rows):
        outputs = harness.apply(row.given)
        assert outputs == row.outputs, f"row {index}: {row.given}"
        state = harness.state()
        for key, expected in row.state.items():
            assert state[key] == expected, f"row {index}: {key}"


def locked_on_b0_in_round_0() -> list[Row]:
    """Shared prefix: a prevotes and precommits B0 in round 0 and locks; round 0 ends."""
    return [
        Row(Start(0), [ScheduleTimeout(Step.PROPOSE, 0)], {"round": 0, "step": Step.PROPOSE}),
        Row(Prop(0, B0), [CastVote(PV, 0, B0.hash)], {"step": Step.PREVOTE}),
        Row(
            Votes(PV, 0, B0, "bc"),
            [CastVote(PC, 0, B0.hash)],  # a polka needs no prevote timeout
            {"step": Step.PRECOMMIT, "locked": (0, B0.hash), "valid": (0, B0.hash)},
        ),
        Row(Votes(PC, 0, None, "bc"), [ScheduleTimeout(Step.PRECOMMIT, 0)]),
        Row(Timeout(Step.PRECOMMIT, 0), [ScheduleTimeout(Step.PROPOSE, 1)], {"round": 1}),
    ]


TABLES: dict[str, tuple[str, list[Row]]] = {
    "lock without POL: a locked node prevotes nil for another block": (
        "a",
        [
            *locked_on_b0_in_round_0(),
            Row(Prop(1, B1), [CastVote(PV, 1, None)], {"locked": (0, B0.hash)}),
        ],
    ),
    "a locked node prevotes its locked block when it is proposed again": (
        "a",
        [*locked_on_b0_in_round_0(), Row(Prop(1, B0, valid_round=0), [CastVote(PV, 1, B0.hash)])],
    ),
    "relock: a polka for another block in a later round moves the lock": (
        "a",
        [
            *locked_on_b0_in_round_0(),
            Row(Prop(1, B1), [CastVote(PV, 1, None)]),
            Row(
                Votes(PV, 1, B1, "bcd"),
                [ScheduleTimeout(Step.PREVOTE, 1), CastVote(PC, 1, B1.hash)],
                {"locked": (1, B1.hash), "valid": (1, B1.hash), "step": Step.PRECOMMIT},
            ),
        ],
    ),
    "unlock on a later POL: a proposal justified by a newer polka is prevoted": (
        "a",
        [
            *locked_on_b0_in_round_0(),
            Row(Timeout(Step.PROPOSE, 1), [CastVote(PV, 1, None)]),
            Row(Votes(PV, 1, B1, "bcd"), [ScheduleTimeout(Step.PREVOTE, 1)]),  # no proposal seen
            Row(Timeout(Step.PREVOTE, 1), [CastVote(PC, 1, None)], {"locked": (0, B0.hash)}),
            Row(Votes(PC, 1, None, "bc"), [ScheduleTimeout(Step.PRECOMMIT, 1)]),
            Row(Timeout(Step.PRECOMMIT, 1), [ScheduleTimeout(Step.PROPOSE, 2)], {"round": 2}),
            Row(Prop(2, B1, valid_round=1), [CastVote(PV, 2, B1.hash)], {"locked": (0, B0.hash)}),
        ],
    ),
    "a proposal whose polka is older than the lock is refused": (
        "a",
        [
            *locked_on_b0_in_round_0(),
            Row(Votes(PV, 0, None, ""), []),
            Row(Prop(1, B1, valid_round=0), []),  # no polka for B1 in round 0: wait
            Row(Timeout(Step.PROPOSE, 1), [CastVote(PV, 1, None)]),
        ],
    ),
    "valid block: a polka seen after precommitting nil makes the block valid, not locked": (
        "c",
        [
            Row(Start(0), [ScheduleTimeout(Step.PROPOSE, 0)]),
            Row(Timeout(Step.PROPOSE, 0), [CastVote(PV, 0, None)]),
            Row(Votes(PV, 0, B0, "ab"), [ScheduleTimeout(Step.PREVOTE, 0)]),
            Row(Timeout(Step.PREVOTE, 0), [CastVote(PC, 0, None)], {"step": Step.PRECOMMIT}),
            Row(Prop(0, B0), [], {"valid": (-1, None)}),  # late, and no polka yet
            Row(
                Votes(PV, 0, B0, "d"),
                [],
                {"locked": (-1, None), "valid": (0, B0.hash)},
            ),
            Row(Votes(PC, 0, None, "ab"), [ScheduleTimeout(Step.PRECOMMIT, 0)]),
            Row(Timeout(Step.PRECOMMIT, 0), [Propose(1, B0, 0)], {"round": 1}),
        ],
    ),
    "an invalid proposal gets a nil prevote": (
        "a",
        [
            Row(Start(0), [ScheduleTimeout(Step.PROPOSE, 0)]),
            Row(Prop(0, B0, valid=False), [CastVote(PV, 0, None)]),
            Row(Votes(PC, 0, B0, "bcd"), [ScheduleTimeout(Step.PRECOMMIT, 0)], {"decided": None}),
        ],
    ),
    "commit from a previous round": (
        "a",
        [
            Row(Start(0), [ScheduleTimeout(Step.PROPOSE, 0)]),
            Row(Votes(PV, 1, None, "bc"), [ScheduleTimeout(Step.PROPOSE, 1)], {"round": 1}),
            Row(Votes(PC, 0, B0, "bcd"), []),  # 2f+1 precommits, but which block?
            Row(Prop(0, B0), [Decide(0, B0)], {"decided": B0.hash}),
            Row(Votes(PV, 1, B1, "d"), []),  # nothing happens after the decision
        ],
    ),
    "f+1 votes of a later round make the node skip to it": (
        "a",
        [
            Row(Start(0), [ScheduleTimeout(Step.PROPOSE, 0)]),
            Row(Votes(PV, 5, None, "b"), []),
            Row(Votes(PC, 5, None, "c"), [ScheduleTimeout(Step.PROPOSE, 5)], {"round": 5}),
        ],
    ),
    "the proposer proposes a new value in round 0": (
        "b",
        [Row(Start(0), [Propose(0, None, -1)], {"round": 0, "step": Step.PROPOSE})],
    ),
    "halting without quorum: two of four cannot move past prevote": (
        "a",
        [
            Row(Start(0), [ScheduleTimeout(Step.PROPOSE, 0)]),
            Row(Timeout(Step.PROPOSE, 0), [CastVote(PV, 0, None)]),
            Row(Votes(PV, 0, None, "b"), [], {"step": Step.PREVOTE}),
            Row(Votes(PC, 0, None, "b"), [], {"round": 0, "step": Step.PREVOTE}),
            Row(Votes(PV, 0, B0, "c"), [ScheduleTimeout(Step.PREVOTE, 0)]),  # the third voter
        ],
    ),
}


@pytest.mark.parametrize(("me", "rows"), TABLES.values(), ids=TABLES.keys())
def test_round_state_machine(me: str, rows: list[Row]) -> None:
    run_table(me, rows)
