"""A proposer holds its proposal while a round's batch of transactions is incomplete.

The core (sans-IO, signed messages) with an ``awaits`` hook: the held proposal goes out the
moment the batch is complete or ``batch_wait_s`` has passed, only the proposer holds, and a
hold outlived by its round does nothing. Then the swarm app's hook (:func:`expects_more`)
on real signed check-ins and ``Merged`` reports.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from swarmlearn.consensus.ledger.batching import PENDING_INSPECTED_MAX, expects_more
from swarmlearn.consensus.ledger.rounds import RoundStatus
from swarmlearn.consensus.tendermint.app import KeyValueApp
from swarmlearn.consensus.tendermint.core import BATCH_TIMER, ConsensusConfig, ConsensusCore
from swarmlearn.consensus.tendermint.crypto import SimVerifier
from swarmlearn.consensus.tendermint.events import Committed, Genesis, SubmitTx
from swarmlearn.consensus.tendermint.types import Proposal, Step, Tx, Vote, VoteType
from swarmlearn.consensus.tendermint.wal import Signed, Started, TimeoutTag
from swarmlearn.sansio import (
    Broadcast,
    Effect,
    Persist,
    Receive,
    Request,
    SetTimer,
    Start,
    TimerFired,
)
from tests.consensus_helpers import SIGNERS
from tests.test_consensus_core import FOUR, SOLO, delivered, run
from tests.test_swarm_app import (  # noqa: F401 (swarm: the module's fixture)
    Swarm,
    check_in,
    exchanging,
    joined,
    merged,
    round_of,
    swarm,
)

WAIT_S = 0.1


def batch_of(size: int) -> object:
    """A hook that expects ``size`` transactions."""

    def awaits(pending: Sequence[bytes]) -> bool:
        return len(pending) < size

    return awaits


def core(genesis: Genesis, me: str, size: int) -> ConsensusCore:
    peers = [v.node for v in genesis.validators]
    config = ConsensusConfig(batch_wait_s=WAIT_S)
    hook = batch_of(size)
    assert callable(hook)
    return ConsensusCore(
        genesis, SIGNERS[me], SimVerifier(), KeyValueApp(), random.Random(1), peers, config, hook
    )


def proposals(effects: list[Effect]) -> list[Proposal]:
    return [
        e.message for e in effects if isinstance(e, Broadcast) and isinstance(e.message, Proposal)
    ]


def test_the_proposer_waits_for_the_rest_of_the_batch_then_proposes_at_once() -> None:
    node = core(SOLO, "a", 3)
    node.handle(Start(), 0.0)
    first = run(node, Request(SubmitTx(b"a=1")), 0.0)
    assert proposals(first) == []
    assert SetTimer(BATCH_TIMER, WAIT_S) in first
    assert proposals(run(node, Request(SubmitTx(b"b=2")), 0.01)) == []
    last = run(node, Request(SubmitTx(b"c=3")), 0.02)
    (proposal,) = proposals(last)
    assert proposal.block.txs == (b"a=1", b"b=2", b"c=3")  # one block: the whole batch
    assert [c.height for c in delivered(last, Committed) if isinstance(c, Committed)] == [1]
    # This hook expects 3 more for the proof block too: it waits, then goes at the timer.
    proof = run(node, TimerFired(BATCH_TIMER), 0.02 + WAIT_S)
    assert [p.block.txs for p in proposals(proof)] == [()]
    assert [c.height for c in delivered(proof, Committed) if isinstance(c, Committed)] == [2]
    assert run(node, TimerFired(BATCH_TIMER), 1.0) == []  # a stale timer does nothing


def test_the_wait_ends_after_batch_wait_s_with_what_has_come() -> None:
    node = core(SOLO, "a", 3)
    node.handle(Start(), 0.0)
    run(node, Request(SubmitTx(b"a=1")), 0.0)
    fired = run(node, TimerFired(BATCH_TIMER), WAIT_S)
    first = proposals(fired)[0]
    assert first.block.txs == (b"a=1",)
    committed = delivered(fired, Committed)[0]
    assert isinstance(committed, Committed)
    assert committed.txs == (b"a=1",)


def test_only_the_proposer_holds_and_the_others_vote_as_usual() -> None:
    nodes = {n: core(FOUR, n, 2) for n in "abcd"}
    proposer = nodes["a"].validators.proposer(1, 0)
    other = next(n for n in "abcd" if n != proposer)
    for node in nodes.values():
        node.handle(Start(), 0.0)
    held = nodes[proposer].handle(Receive(other, Tx(b"x=1")), 0.0)
    assert proposals(held) == []
    follower = nodes[other].handle(Request(SubmitTx(b"x=1")), 0.0)
    timers = [e for e in follower if isinstance(e, SetTimer)]
    assert [t.tag for t in timers] == [TimeoutTag(1, 0, Step.PROPOSE)]  # no hold
    released = nodes[proposer].handle(Receive(other, Tx(b"y=2")), 0.01)
    (proposal,) = proposals(released)
    assert proposal.block.txs == (b"x=1", b"y=2")
    prevote = nodes[other].handle(Receive(proposer, proposal), 0.02)
    votes = [e.message for e in prevote if isinstance(e, Broadcast)]
    assert [(v.kind, v.value) for v in votes if isinstance(v, Vote)] == [
        (VoteType.PREVOTE, proposal.block.hash)
    ]


def test_a_hold_outlived_by_its_round_is_dropped() -> None:
    nodes = {n: core(FOUR, n, 2) for n in "abcd"}
    proposer = nodes["a"].validators.proposer(1, 0)
    node = nodes[proposer]
    node.handle(Start(), 0.0)
    assert proposals(node.handle(Request(SubmitTx(b"x=1")), 0.0)) == []
    assert node.validators.proposer(1, 1) != proposer
    for voter in [n for n in "abcd" if n != proposer][:2]:  # f+1 of round 1: skip to it
        unsigned = Vote(VoteType.PREVOTE, 1, 1, None, voter, b"")
        signature = SIGNERS[voter].sign(unsigned.sign_bytes(FOUR.chain_id))
        node.handle(Receive(voter, Vote(VoteType.PREVOTE, 1, 1, None, voter, signature)), 0.5)
    assert node.machine.state.round == 1
    assert proposals(node.handle(TimerFired(BATCH_TIMER), 0.6)) == []
    assert (1, 0, "proposal") not in node.signed  # round 0 never got one


def test_the_swarm_app_expects_every_active_learners_check_in(swarm: Swarm) -> None:  # noqa: F811
    ledger = joined(swarm, "a", "b", "c")
    app = ledger.app
    a, b, c = (check_in(swarm, n, 1) for n in "abc")
    assert not expects_more(app, [])
    assert expects_more(app, [a])
    assert expects_more(app, [a, b])
    assert not expects_more(app, [a, b, c])  # the batch is complete: propose
    assert not expects_more(app, [check_in(swarm, "b", 7)])  # not the round due: refused
    ledger.block(a)  # one is on the ledger: it counts
    assert not expects_more(app, [])  # an empty (proof) block is never held
    assert expects_more(app, [b])
    assert not expects_more(app, [b, c])


def test_the_swarm_app_expects_every_participants_merged_report(swarm: Swarm) -> None:  # noqa: F811
    ledger = exchanging(swarm)
    app = ledger.app
    assert round_of(ledger).status == RoundStatus.EXCHANGING
    reports = [merged(swarm, n, b"m" * 32) for n in "abc"]
    assert not expects_more(app, [])  # nobody reported: the exchange is still running
    assert expects_more(app, reports[:2])
    assert not expects_more(app, reports)
    assert not expects_more(app, [merged(swarm, "a", b"m" * 32, attempt=2)])  # no such attempt
    ledger.block(reports[0])
    assert not expects_more(app, [])
    assert expects_more(app, reports[1:2])
    assert not expects_more(app, reports[1:])


def test_a_full_mempool_is_not_inspected(swarm: Swarm) -> None:  # noqa: F811
    ledger = joined(swarm, "a", "b", "c")
    pending = [check_in(swarm, "a", 1)] + [b"k=%d" % i for i in range(PENDING_INSPECTED_MAX)]
    assert not expects_more(ledger.app, pending)
    assert expects_more(ledger.app, pending[:2])


def test_a_proposer_stopped_while_holding_persists_its_proposal_before_sending_it() -> None:
    nodes = {n: core(FOUR, n, 2) for n in "abcd"}
    proposer = nodes["a"].validators.proposer(1, 0)
    other = next(n for n in "abcd" if n != proposer)
    node = nodes[proposer]
    node.handle(Start(), 0.0)
    held = node.handle(Receive(other, Tx(b"x=1")), 0.0)
    wal = tuple(e.record for e in held if isinstance(e, Persist) and e.stream == "wal")
    assert wal == (Started(1),)  # stopped here: nothing signed yet
    restarted = core(FOUR, proposer, 2)
    effects = restarted.handle(Start({"wal": wal}), 1.0)
    (proposal,) = proposals(effects)  # the replay proposed (the mempool did not survive)
    persist = effects.index(Persist("wal", Signed(proposal)))
    sent = next(
        i for i, e in enumerate(effects) if isinstance(e, Broadcast) and e.message == proposal
    )
    assert persist < sent
