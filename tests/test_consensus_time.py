"""BFT time and equivocating proposers, through the consensus core's sans-IO interface.

Block time is the voting-power-weighted median of the previous commit's precommit times, so
one clock (10 minutes ahead, or behind) can neither move it nor make honest blocks invalid;
a proposer's second block for a round is evidence, and still decided when a quorum votes it.
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from swarmlearn.consensus.tendermint.app import KeyValueApp
from swarmlearn.consensus.tendermint.core import (
    EMPTY_FOR_TIME_MAX,
    NEXT_HEIGHT_TIMER,
    ConsensusCore,
)
from swarmlearn.consensus.tendermint.crypto import SimVerifier
from swarmlearn.consensus.tendermint.events import Committed, EvidenceFound, Genesis, SubmitTx
from swarmlearn.consensus.tendermint.types import (
    Block,
    BlockHeader,
    BlockResponse,
    Commit,
    CommitSig,
    Proposal,
    Status,
    Step,
    Validator,
    ValidatorSet,
    Vote,
    VoteType,
    tx_root,
)
from swarmlearn.consensus.tendermint.wal import TimeoutTag
from swarmlearn.sansio import (
    Broadcast,
    Deliver,
    Effect,
    Receive,
    Request,
    Send,
    SetTimer,
    Start,
    TimerFired,
)
from tests.consensus_helpers import SIGNERS, validator_set

T0_MS = 1_700_000_000_000
FOUR = Genesis("four", T0_MS, tuple(Validator(n, SIGNERS[n].public_key, 1) for n in "abcd"))
VALIDATORS = ValidatorSet(FOUR.validators)
SKEW_MS = 600_000  # d's clock is 10 minutes ahead


def signed_vote(
    node: str, kind: VoteType, height: int, round_: int, value: bytes | None, time_ms: int
) -> Vote:
    unsigned = Vote(kind, height, round_, value, node, b"", time_ms)
    signature = SIGNERS[node].sign(unsigned.sign_bytes(FOUR.chain_id))
    return Vote(kind, height, round_, value, node, signature, time_ms)


def commit(block: Block, times_ms: dict[str, int]) -> Commit:
    height = block.header.height
    sigs = []
    for node, time_ms in sorted(times_ms.items()):
        vote = signed_vote(node, VoteType.PRECOMMIT, height, 0, block.hash, time_ms)
        sigs.append(CommitSig(node, vote.signature, time_ms))
    return Commit(height, 0, block.hash, tuple(sigs))


def make_block(
    height: int,
    time_ms: int,
    previous: Block | None = None,
    last_commit: Commit | None = None,
    txs: tuple[bytes, ...] = (b"x=1",),
    app_hash: bytes | None = None,
) -> Block:
    header = BlockHeader(
        FOUR.chain_id,
        height,
        time_ms,
        VALIDATORS.proposer(height, 0),
        previous.hash if previous else b"",
        tx_root(txs),
        KeyValueApp().app_hash() if app_hash is None else app_hash,
        VALIDATORS.hash,
        last_commit.hash if last_commit else b"",
    )
    return Block(header, txs, last_commit)


def proposal(block: Block, round_: int = 0) -> Proposal:
    proposer = VALIDATORS.proposer(block.header.height, round_)
    unsigned = Proposal(block.header.height, round_, -1, block, proposer, b"")
    signature = SIGNERS[proposer].sign(unsigned.sign_bytes(FOUR.chain_id))
    return Proposal(block.header.height, round_, -1, block, proposer, signature)


def node_at_height_2(me: str = "a") -> tuple[ConsensusCore, Block, Commit]:
    """``me`` has block 1 (from catch-up) and its commit, whose voter d is 10 min ahead."""
    node = ConsensusCore(
        FOUR, SIGNERS[me], SimVerifier(), KeyValueApp(), random.Random(1), list("abcd")
    )
    node.handle(Start(), T0_MS / 1000)
    first = make_block(1, T0_MS)
    first_commit = commit(first, {"b": T0_MS + 1000, "c": T0_MS + 1100, "d": T0_MS + SKEW_MS})
    node.handle(Receive("b", BlockResponse(first, first_commit)), T0_MS / 1000 + 1)
    assert node.height == 2
    return node, first, first_commit


def own_votes(effects: list[Effect], kind: VoteType) -> list[Vote]:
    return [
        e.message
        for e in effects
        if isinstance(e, Broadcast) and isinstance(e.message, Vote) and e.message.kind == kind
    ]


@pytest.mark.parametrize(
    ("powers", "times", "median"),
    [
        ({}, {"a": 10, "b": 20, "c": 30}, 20),
        ({}, {"a": 10, "b": 20, "c": 30, "d": 10**9}, 30),  # one clock far ahead: an honest one
        ({}, {"a": 0, "b": 20, "c": 30, "d": 40}, 30),  # or far behind
        ({"c": 3}, {"a": 10, "b": 20, "c": 30}, 30),  # weighted by power
        ({"a": 3}, {"a": 10, "b": 20, "c": 30}, 10),
        ({}, {"b": 5}, 5),
    ],
)
def test_block_time_is_the_power_weighted_median_of_the_commit(
    powers: dict[str, int], times: dict[str, int], median: int
) -> None:
    validators = validator_set(("a", "b", "c", "d"), powers)
    sigs = tuple(CommitSig(n, b"", t) for n, t in times.items())
    assert Commit(1, 0, b"\x00" * 32, sigs).median_time_ms(validators) == median


def test_a_proposal_stamped_with_the_median_of_its_last_commit_is_prevoted() -> None:
    node, first, first_commit = node_at_height_2()
    assert first_commit.median_time_ms(VALIDATORS) == T0_MS + 1100  # not d's clock
    second = make_block(2, T0_MS + 1100, first, first_commit, app_hash=node.app.app_hash())
    effects = node.handle(Receive("c", proposal(second)), T0_MS / 1000 + 2)
    assert [v.value for v in own_votes(effects, VoteType.PREVOTE)] == [second.hash]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"time_ms": T0_MS + SKEW_MS}, "time is not the median of the last commit"),
        ({"time_ms": T0_MS + 1101}, "time is not the median of the last commit"),
        ({"last_commit": None}, "last commit missing"),
        ({"last_commit_hash": b"\x01" * 32}, "wrong last commit hash"),
        ({"forged": True}, "last commit: bad signature by b"),
        ({"short": True}, "last commit: not signed by a quorum"),
    ],
)
def test_a_proposal_with_another_time_or_a_bad_last_commit_is_refused(
    change: dict[str, object], reason: str
) -> None:
    node, first, first_commit = node_at_height_2()
    last: Commit | None = first_commit
    if change.get("forged"):
        sigs = first_commit.signatures
        last = Commit(1, 0, first.hash, (CommitSig("b", b"x" * 32, sigs[0].time_ms), *sigs[1:]))
    if change.get("short"):
        last = Commit(1, 0, first.hash, first_commit.signatures[:2])
    if "last_commit" in change:
        last = None
    time_ms = change.get("time_ms", T0_MS + 1100)
    assert isinstance(time_ms, int)
    block = make_block(2, time_ms, first, last, app_hash=node.app.app_hash())
    if "last_commit_hash" in change:
        wrong = dataclasses.replace(block.header, last_commit_hash=b"\x01" * 32)
        block = Block(wrong, block.txs, block.last_commit)
    assert node.block_problem(block) == reason
    effects = node.handle(Receive("c", proposal(block)), T0_MS / 1000 + 2)
    assert [v.value for v in own_votes(effects, VoteType.PREVOTE)] == [None]


def test_a_precommit_carries_the_voters_clock_clamped_past_the_block() -> None:
    node, first, first_commit = node_at_height_2()
    second = make_block(2, T0_MS + 1100, first, first_commit, app_hash=node.app.app_hash())
    node.handle(Receive("c", proposal(second)), T0_MS / 1000 + 0.5)  # a's clock is behind
    effects: list[Effect] = []
    for voter in "bc":
        vote = signed_vote(voter, VoteType.PREVOTE, 2, 0, second.hash, T0_MS + 1200)
        effects += node.handle(Receive(voter, vote), T0_MS / 1000 + 0.5)
    (precommit,) = own_votes(effects, VoteType.PRECOMMIT)
    assert precommit.time_ms == T0_MS + 1101  # its clock says +500 ms: clamped past the block
    node2, *_ = node_at_height_2()
    node2.handle(Receive("c", proposal(second)), T0_MS / 1000 + 7)
    effects = []
    for voter in "bc":
        vote = signed_vote(voter, VoteType.PREVOTE, 2, 0, second.hash, T0_MS + 1200)
        effects += node2.handle(Receive(voter, vote), T0_MS / 1000 + 7)
    assert [v.time_ms for v in own_votes(effects, VoteType.PRECOMMIT)] == [T0_MS + 7000]


def test_the_second_block_of_an_equivocating_proposer_is_decided_when_a_quorum_votes_it() -> None:
    node, first, first_commit = node_at_height_2()
    app_hash = node.app.app_hash()
    one = make_block(2, T0_MS + 1100, first, first_commit, (b"x=1",), app_hash)
    two = make_block(2, T0_MS + 1100, first, first_commit, (b"x=2",), app_hash)
    effects = node.handle(Receive("c", proposal(one)), T0_MS / 1000 + 2)
    assert [v.value for v in own_votes(effects, VoteType.PREVOTE)] == [one.hash]
    effects = node.handle(Receive("b", proposal(two)), T0_MS / 1000 + 2)
    evidence = [e.value for e in effects if isinstance(e, Deliver)]
    assert evidence == [EvidenceFound("c", 2, 0, "proposal")]
    assert not own_votes(effects, VoteType.PREVOTE)  # prevote on the first only
    effects = []
    for voter in "bcd":
        vote = signed_vote(voter, VoteType.PRECOMMIT, 2, 0, two.hash, T0_MS + 2000)
        effects += node.handle(Receive(voter, vote), T0_MS / 1000 + 2)
    committed = [e.value for e in effects if isinstance(e, Deliver)]
    assert [(c.height, c.block_hash) for c in committed if isinstance(c, Committed)] == [
        (2, two.hash)
    ]


def test_a_quorum_for_a_block_not_held_asks_its_voters_for_the_proposal() -> None:
    node, first, first_commit = node_at_height_2()
    two = make_block(2, T0_MS + 1100, first, first_commit, (b"x=2",), node.app.app_hash())
    effects: list[Effect] = []
    for voter in "bcd":
        vote = signed_vote(voter, VoteType.PRECOMMIT, 2, 0, two.hash, T0_MS + 2000)
        effects += node.handle(Receive(voter, vote), T0_MS / 1000 + 2)
    asked = [e for e in effects if isinstance(e, Send) and isinstance(e.message, Status)]
    assert asked == [Send(v, Status(2, 0, Step.PROPOSE)) for v in "bcd"]
    effects = node.handle(Receive("b", proposal(two)), T0_MS / 1000 + 2)  # b answers
    committed = [e.value for e in effects if isinstance(e, Deliver)]
    assert [c.height for c in committed if isinstance(c, Committed)] == [2]


def test_empty_blocks_that_bring_time_on_are_at_most_two_in_a_row() -> None:
    """A proposer whose clock is far ahead (or whose network is slow) finds every last commit
    stale: it proposes an empty block only while one of the last two blocks held txs."""
    node, first, first_commit = node_at_height_2()
    far_ahead_s = (T0_MS + SKEW_MS) / 1000
    previous, last = first, first_commit
    due = []
    for height in (2, 3, 4):
        time_ms = last.median_time_ms(VALIDATORS)
        node.now = far_ahead_s
        due.append(node._clock_block_due(time_ms))
        empty = make_block(height, time_ms, previous, last, (), node.app.app_hash())
        votes = {"a": time_ms + 1, "b": time_ms + 2, "c": time_ms + 3}
        previous, last = empty, commit(empty, votes)
        node.handle(Receive("b", BlockResponse(empty, last)), far_ahead_s)
        assert node.height == height + 1
    assert due == [True, True, False]


def test_a_proposer_that_just_decided_from_votes_proposes_no_empty_block_for_time() -> None:
    """Right after this node decided the last height itself, the block time is old only by
    the network's delay (here 300 ms: more than block_time_lag_s): an empty block's commit
    would be as old, so none is due. After a quiet spell one is."""
    node, first, first_commit = node_at_height_2()
    time_ms = first_commit.median_time_ms(VALIDATORS)
    two = make_block(2, time_ms, first, first_commit, (b"x=1",), node.app.app_hash())
    decided_s = (T0_MS + 2300) / 1000  # 300 ms after the precommits' times
    node.handle(Receive(two.header.proposer, proposal(two)), decided_s)
    for voter in "bcd":
        vote = signed_vote(voter, VoteType.PRECOMMIT, 2, 0, two.hash, T0_MS + 2000)
        node.handle(Receive(voter, vote), decided_s)
    assert node.height == 3
    assert node.decided_at == decided_s
    last = node.blocks[2][1].median_time_ms(VALIDATORS)
    node.now = decided_s
    assert not node._clock_block_due(last)  # busy: as fresh as the network makes it
    node.now = decided_s + 0.3  # quiet for longer than block_time_lag_s
    assert node._clock_block_due(last)


def test_a_polka_for_another_block_than_the_proposers_asks_only_after_equivocation() -> None:
    """2f+1 prevotes for a block not held: a proposal slower than its votes is not asked for;
    but when the proposer sent this node another block, the polka's block is fetched."""
    for held_other in (False, True):
        node, first, first_commit = node_at_height_2()
        app_hash = node.app.app_hash()
        one = make_block(2, T0_MS + 1100, first, first_commit, (b"x=1",), app_hash)
        two = make_block(2, T0_MS + 1100, first, first_commit, (b"x=2",), app_hash)
        if held_other:
            node.handle(Receive("c", proposal(one)), T0_MS / 1000 + 2)
        effects: list[Effect] = []
        for voter in "bcd":
            vote = signed_vote(voter, VoteType.PREVOTE, 2, 0, two.hash, T0_MS + 2000)
            effects += node.handle(Receive(voter, vote), T0_MS / 1000 + 2)
        asked = [e.to for e in effects if isinstance(e, Send) and isinstance(e.message, Status)]
        assert asked == (list("bcd") if held_other else [])


def test_failed_rounds_bring_empty_blocks_for_time_only_so_many_in_a_row() -> None:
    """On validators so busy that every height needs a second round, each failed round made
    an empty block for time, and a waiting transaction never went in (32 daemons on 2 cores):
    after EMPTY_FOR_TIME_MAX empty blocks in a row, a failed round's proposal carries txs."""
    node, first, first_commit = node_at_height_2()
    previous, last = first, first_commit
    due = []
    for height in range(2, 4 + EMPTY_FOR_TIME_MAX):
        time_ms = last.median_time_ms(VALIDATORS)
        node.now = (time_ms + 1500) / 1000  # a failed round later: the time is stale
        node.machine.state = dataclasses.replace(node.machine.state, round=1)
        due.append(node._clock_block_due(time_ms))
        empty = make_block(height, time_ms, previous, last, (), node.app.app_hash())
        votes = {"a": time_ms + 1, "b": time_ms + 2, "c": time_ms + 3}
        previous, last = empty, commit(empty, votes)
        node.handle(Receive("b", BlockResponse(empty, last)), node.now)
        assert node.height == height + 1
    assert due == [True] * EMPTY_FOR_TIME_MAX + [False, False]


def decide_height_2_slowly(node: ConsensusCore, took_s: float) -> float:
    """Height 2's proposal reaches ``node`` at T0 + 1 s and its precommits ``took_s`` later
    (votes stamped then): the node decides at that moment, which is returned."""
    first_commit = node.blocks[1][1]
    time_ms = first_commit.median_time_ms(VALIDATORS)
    two = make_block(2, time_ms, node.blocks[1][0], first_commit, (b"x=1",), node.app.app_hash())
    proposed_s = T0_MS / 1000 + 1
    decided_s = proposed_s + took_s
    node.handle(Receive(two.header.proposer, proposal(two)), proposed_s)
    for voter in "bcd":
        stamp = int(decided_s * 1000)
        node.handle(Receive(voter, signed_vote(voter, VoteType.PRECOMMIT, 2, 0, two.hash, stamp)),
                    decided_s)  # fmt: skip
    assert node.height == 3
    return decided_s


@pytest.mark.parametrize("took_s", [0.1, 1.5])
def test_on_a_slow_network_a_wait_as_long_as_a_height_brings_no_empty_block_for_time(
    took_s: float,
) -> None:
    """An empty block for time costs a whole height; where a height takes 1.5 s from its
    proposal to its decision (validators loaded: 32 daemons on 2 cores during a round), a
    transaction arriving a second after the decision goes straight in (the empty block's
    commit would stamp it just as old); where it takes 0.1 s, the second is a quiet spell."""
    node, _, _ = node_at_height_2()
    decided_s = decide_height_2_slowly(node, took_s)
    assert node.pace_s == pytest.approx(took_s)
    last = node.blocks[2][1].median_time_ms(VALIDATORS)
    node.now = decided_s + 1.0
    assert node._clock_block_due(last) == (took_s < 1.0)
    node.now = decided_s + took_s + 0.3  # longer than the pace: quiet even there
    assert node._clock_block_due(last)


def test_the_proposal_timeout_grows_by_the_networks_pace_and_at_most_two_timeouts() -> None:
    """A non-proposer waits for the proposal its timeout plus the last height's pace, so a
    proposal as slow as the last one does not fail round 0; a stalled height (20 s) counts
    for at most PACE_MAX timeouts. The other steps' timeouts do not change."""
    base = ConsensusCore(
        FOUR, SIGNERS["a"], SimVerifier(), KeyValueApp(), random.Random(1), list("abcd")
    ).config
    for took_s, extra_s in ((0.1, 0.1), (1.5, 1.5), (20.0, 2 * base.timeout_propose_s)):
        node, _, _ = node_at_height_2()
        decide_height_2_slowly(node, took_s)
        assert node.timeout_s(Step.PROPOSE, 0) == pytest.approx(base.timeout_propose_s + extra_s)
        assert node.timeout_s(Step.PROPOSE, 2) == pytest.approx(
            base.timeout_s(Step.PROPOSE, 2) + extra_s
        )
        assert node.timeout_s(Step.PREVOTE, 0) == base.timeout_prevote_s
        assert node.timeout_s(Step.PRECOMMIT, 1) == base.timeout_s(Step.PRECOMMIT, 1)
    # The timer a non-proposer sets when the next height starts (a transaction arrives).
    waiter = next(n for n in "abc" if VALIDATORS.proposer(3, 0) != n)
    node, _, _ = node_at_height_2(waiter)
    decided_s = decide_height_2_slowly(node, 1.5)
    effects = node.handle(Request(SubmitTx(b"y=2")), decided_s)
    effects += node.handle(TimerFired(NEXT_HEIGHT_TIMER), decided_s)
    timers = {e.tag.step: e.delay_s for e in effects if isinstance(e, SetTimer)
              and isinstance(e.tag, TimeoutTag)}  # fmt: skip
    assert timers == {Step.PROPOSE: pytest.approx(base.timeout_propose_s + 1.5)}
