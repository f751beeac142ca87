"""The consensus core through its sans-IO interface: commits, WAL rules, restart, catch-up."""

from __future__ import annotations

import random

from swarmlearn.consensus.tendermint.app import KeyValueApp
from swarmlearn.consensus.tendermint.catchup import voter_bits
from swarmlearn.consensus.tendermint.core import (
    BATCH_TIMER,
    BLOCKS,
    NEXT_HEIGHT_TIMER,
    ConsensusConfig,
    ConsensusCore,
)
from swarmlearn.consensus.tendermint.crypto import SimVerifier
from swarmlearn.consensus.tendermint.events import (
    Committed,
    EvidenceFound,
    Genesis,
    SubmitTx,
    TxRefused,
)
from swarmlearn.consensus.tendermint.mempool import Mempool, MempoolConfig
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
from swarmlearn.consensus.tendermint.wal import Heard, HeightDone, Signed, Started
from swarmlearn.sansio import (
    Broadcast,
    Deliver,
    Effect,
    Input,
    Persist,
    Receive,
    Request,
    Send,
    SetTimer,
    Start,
    TimerFired,
)
from tests.consensus_helpers import SIGNERS, vote

SOLO = Genesis("solo", 0, (Validator("a", SIGNERS["a"].public_key, 1),))
FOUR = Genesis("four", 0, tuple(Validator(n, SIGNERS[n].public_key, 1) for n in "abcd"))


def core(genesis: Genesis = SOLO, me: str = "a", *, proof_wait_s: float = 0.0) -> ConsensusCore:
    """A validator; its proof blocks are not held (``proof_wait_s`` 0) unless asked: these
    tables follow each block and its proof block at one ``now``."""
    peers = [v.node for v in genesis.validators]
    config = ConsensusConfig(proof_wait_s=proof_wait_s)
    return ConsensusCore(
        genesis, SIGNERS[me], SimVerifier(), KeyValueApp(), random.Random(1), peers, config
    )


def run(node: ConsensusCore, event: Input, now: float) -> list[Effect]:
    """Handle ``event``, then the immediate next-height timers it sets, as a driver would."""
    effects = node.handle(event, now)
    done = 0
    while any(isinstance(e, SetTimer) and e.tag == NEXT_HEIGHT_TIMER for e in effects[done:]):
        done = len(effects)
        effects += node.handle(TimerFired(NEXT_HEIGHT_TIMER), now)
    return effects


def delivered(effects: list[Effect], kind: type) -> list[object]:
    return [e.value for e in effects if isinstance(e, Deliver) and isinstance(e.value, kind)]


def persisted(effects: list[Effect]) -> dict[str, tuple[object, ...]]:
    streams: dict[str, list[object]] = {}
    for effect in effects:
        if isinstance(effect, Persist):
            streams.setdefault(effect.stream, []).append(effect.record)
    return {stream: tuple(records) for stream, records in streams.items()}


def test_no_block_without_transactions_then_one_promptly_and_a_proof_block() -> None:
    node = core()
    idle = node.handle(Start(), 0.0)
    assert not [e for e in idle if isinstance(e, Broadcast | Persist)]  # no empty blocks
    effects = run(node, Request(SubmitTx(b"k=v")), 0.1)  # within block_time_lag_s of genesis
    first, proof = delivered(effects, Committed)
    assert isinstance(first, Committed)
    assert isinstance(proof, Committed)
    assert (first.height, first.txs) == (1, (b"k=v",))
    assert (proof.height, proof.txs) == (2, ())  # records block 1's app hash in a header
    assert node.blocks[2][0].header.app_hash == first.app_hash
    assert node.blocks[2][0].header.previous_hash == node.blocks[1][0].hash
    assert isinstance(node.app, KeyValueApp)
    assert node.app.state == {"k": "v"}
    assert not node.started  # and then idle again: no third block
    second = delivered(run(node, Request(SubmitTx(b"k=w")), 0.1), Committed)
    assert [c.height for c in second if isinstance(c, Committed)] == [3, 4]


def test_a_proof_block_waits_a_moment_for_a_transaction_to_carry() -> None:
    """The proof block after a state change is held ``proof_wait_s`` for a transaction: a
    client that submits its next transaction once the last one committed gets it into the
    very next block, not the one after the proof block."""
    node = core(proof_wait_s=ConsensusConfig().proof_wait_s)  # the default: held
    node.handle(Start(), 0.0)
    first = node.handle(Request(SubmitTx(b"k=v")), 0.1)
    assert [(c.height, c.txs) for c in delivered(first, Committed) if isinstance(c, Committed)] == [
        (1, (b"k=v",))
    ]
    held = node.handle(TimerFired(NEXT_HEIGHT_TIMER), 0.1)  # height 2 starts: a proof block
    assert [e for e in held if isinstance(e, SetTimer)] == [
        SetTimer(BATCH_TIMER, node.config.proof_wait_s)
    ]
    assert not [e for e in held if isinstance(e, Broadcast)]  # no proposal yet
    late_s = 0.1 + 0.8 * node.config.proof_wait_s  # within the wait, past block_time_lag_s
    assert late_s - 0.1 > node.config.block_time_lag_s
    carried = run(node, Request(SubmitTx(b"k=w")), late_s)
    committed = [c for c in delivered(carried, Committed) if isinstance(c, Committed)]
    assert [(c.height, c.txs) for c in committed] == [(2, (b"k=w",))]  # block 3: held again
    assert node.held == (3, 0)
    proof = node.handle(TimerFired(BATCH_TIMER), late_s + node.config.proof_wait_s)
    assert [c.height for c in delivered(proof, Committed) if isinstance(c, Committed)] == [3]
    assert node.blocks[2][0].header.app_hash == first_app_hash(first)
    assert isinstance(node.app, KeyValueApp)
    assert node.app.state == {"k": "w"}


def test_a_restart_makes_a_held_proof_block_after_the_replay_and_persists_it() -> None:
    """Stopped while its proof block was held (nothing signed at that height): the replay
    does not make the proposal (a lone validator would decide it there, and the replay keeps
    no effects); the restart makes it, and the block is persisted: no height is skipped."""
    wait_s = ConsensusConfig().proof_wait_s
    node = core(proof_wait_s=wait_s)
    log: list[Effect] = list(node.handle(Start(), 0.0))
    log += run(node, Request(SubmitTx(b"k=v")), 0.1)
    assert node.held == (2, 0)  # stopped here
    again = core(proof_wait_s=wait_s)
    effects = again.handle(Start(persisted(log)), 5.0)
    blocks = [e.record for e in effects if isinstance(e, Persist) and e.stream == BLOCKS]
    assert [block.header.height for block, _ in blocks] == [2]
    assert [c.height for c in delivered(effects, Committed) if isinstance(c, Committed)] == [2]
    assert again.height == 3
    assert again.held is None


def test_a_block_the_replay_decides_is_stored_without_a_gap() -> None:
    """The last block never reached the blocks stream (a full disk, a torn tail), but the
    votes that decided it are in the WAL: the replay decides it again, and the restart stores
    it (and its end-of-height marker) before anything else, so blocks stay 1, 2, 3, ..."""
    node = core()
    log: list[Effect] = list(node.handle(Start(), 0.0))
    for i in range(2):
        log += run(node, Request(SubmitTx(b"k%d=v" % i)), 1.0 + i)
    stored = persisted(log)
    top = node.height - 1
    torn = {
        BLOCKS: tuple(r for r in stored[BLOCKS] if r != node.blocks[top]),
        "wal": tuple(r for r in stored["wal"] if r != HeightDone(top)),
    }
    assert len(torn[BLOCKS]) == top - 1
    again = core()
    effects = again.handle(Start(torn), 10.0)
    stores = [e for e in effects if isinstance(e, Persist)]
    assert stores[:2] == [Persist(BLOCKS, node.blocks[top]), Persist("wal", HeightDone(top))]
    assert [e for e in effects if isinstance(e, Persist) and e.stream == BLOCKS] == stores[:1]
    assert again.height == top + 1


def first_app_hash(effects: list[Effect]) -> bytes:
    (committed,) = [c for c in delivered(effects, Committed) if isinstance(c, Committed)]
    return committed.app_hash


def test_after_a_quiet_spell_an_empty_block_brings_block_time_to_the_present() -> None:
    """Block time is the median of the last commit's vote times: after 5 s of quiet that
    commit is 5 s old, so the proposer first commits an empty block, voted now."""
    node = core()
    node.handle(Start(), 0.0)
    run(node, Request(SubmitTx(b"k=v")), 0.1)  # blocks 1 and 2 (the proof block)
    later = delivered(run(node, Request(SubmitTx(b"k=w")), 5.0), Committed)
    assert [(c.height, c.txs) for c in later if isinstance(c, Committed)] == [
        (3, ()),
        (4, (b"k=w",)),
        (5, ()),
    ]
    times = [node.blocks[h][0].header.time_ms for h in (1, 2, 3, 4)]
    assert times == [0, 100, 101, 5000]  # genesis; then each the median of its last commit


def test_own_messages_are_persisted_before_they_are_sent() -> None:
    node = core()
    node.handle(Start(), 0.0)
    effects = run(node, Request(SubmitTx(b"k=v")), 0.1)
    sends = [
        i
        for i, e in enumerate(effects)
        if isinstance(e, Broadcast) and isinstance(e.message, Proposal | Vote)
    ]
    assert len(sends) == 6  # proposal, prevote, precommit; then the same for the proof block
    for index in sends:
        before, sent = effects[index - 1], effects[index]
        assert isinstance(before, Persist)
        assert isinstance(sent, Broadcast)
        assert isinstance(sent.message, Proposal | Vote)
        assert before.record == Signed(sent.message)
    marker = [e for e in effects if isinstance(e, Persist) and e.record == HeightDone(1)]
    blocks = [i for i, e in enumerate(effects) if isinstance(e, Persist) and e.stream == BLOCKS]
    assert marker
    assert blocks
    assert blocks[0] < effects.index(marker[0])


def test_a_received_vote_is_written_before_it_is_processed() -> None:
    node = core(FOUR, "a")
    node.handle(Start(), 0.0)
    prevote = vote("b", VoteType.PREVOTE, 0, None, chain="four")
    effects = node.handle(Receive("b", prevote), 0.1)
    persists = [e for e in effects if isinstance(e, Persist)]
    assert persists[0].record == Started(1)
    assert persists[1].record == Heard(prevote)


def test_a_status_says_what_it_holds_and_the_answer_leaves_that_out() -> None:
    """A status carries a bit per validator for the votes of its round it holds (and whether
    it holds the proposal); the answer sends only the rest, not every vote every time."""
    node = core(FOUR, "a")
    node.handle(Start(), 0.0)
    for voter in "bc":
        node.handle(Receive(voter, vote(voter, VoteType.PREVOTE, 0, None, chain="four")), 0.1)
    own = node.status()
    assert own.prevotes == voter_bits(node.validators, "bc")
    assert own.precommits == voter_bits(node.validators, "")
    holds_b = Status(1, 0, Step.PROPOSE, False, voter_bits(node.validators, "b"), b"")
    answer = node.handle(Receive("d", holds_b), 0.2)
    sent = [e.message for e in answer if isinstance(e, Send) and isinstance(e.message, Vote)]
    assert [(v.kind, v.validator) for v in sent] == [(VoteType.PREVOTE, "c")]
    everything = node.handle(Receive("d", Status(1, 0, Step.PROPOSE)), 0.3)  # holds nothing
    assert len([e for e in everything if isinstance(e, Send)]) == 2


def test_a_restart_rebuilds_state_from_blocks_and_wal_without_redelivering() -> None:
    node = core()
    log: list[Effect] = list(node.handle(Start(), 0.0))
    for i in range(3):
        log += run(node, Request(SubmitTx(b"k%d=v" % i)), 1.0 + i)
    again = core()
    effects = again.handle(Start(persisted(log)), 10.0)
    # Three blocks with a transaction, each after an empty block (a second of quiet: it
    # brings block time on) and followed by a proof block.
    assert again.height == 10
    assert isinstance(again.app, KeyValueApp)
    assert again.app.state == {"k0": "v", "k1": "v", "k2": "v"}
    assert again.app.executed_heights == list(range(1, 10))
    times = [again.blocks[h][0].header.time_ms for h in range(1, 10)]
    assert times == [0, 1000, 1001, 1002, 2000, 2001, 2002, 3000, 3001]
    assert [node.blocks[h][0].header.time_ms for h in range(1, 10)] == times
    assert not delivered(effects, Committed)
    assert delivered(run(again, Request(SubmitTx(b"k=z")), 11.0), Committed)


def test_the_mempool_refuses_duplicates_junk_and_overflow() -> None:
    pool = Mempool(KeyValueApp().check_tx, MempoolConfig(txs_max=2, tx_bytes_max=10))
    assert pool.add(b"a=1") == ""
    assert pool.add(b"a=1") == "already in the mempool"
    assert pool.add(b"no equals") == "expected key=value"
    assert "over the 10-byte limit" in pool.add(b"k=" + b"x" * 20)
    assert pool.add(b"b=2") == ""
    assert pool.add(b"c=3") == "mempool full"
    assert pool.reap(10, 100) == [b"a=1", b"b=2"]
    pool.remove_committed([b"a=1"])
    assert pool.add(b"a=1") == "already committed"
    assert len(pool) == 1


def test_a_refused_transaction_is_reported() -> None:
    node = core()
    node.handle(Start(), 0.0)
    assert delivered(node.handle(Request(SubmitTx(b"junk")), 0.1), TxRefused) == [
        TxRefused(b"junk", "expected key=value")
    ]


def block_one(
    genesis: Genesis, txs: tuple[bytes, ...] = (b"x=1",), app_hash: bytes | None = None
) -> Block:
    header = BlockHeader(
        genesis.chain_id,
        1,
        genesis.time_ms,  # BFT time: block 1 has the genesis time
        "b",
        b"",
        tx_root(txs),
        KeyValueApp().app_hash() if app_hash is None else app_hash,
        ValidatorSet(genesis.validators).hash,
    )
    return Block(header, txs)


def commit_for(block: Block, signers: str, chain: str = "four") -> Commit:
    sigs = tuple(
        CommitSig(n, vote(n, VoteType.PRECOMMIT, 0, block.hash, chain=chain).signature)
        for n in signers
    )
    return Commit(1, 0, block.hash, sigs)


def test_catch_up_applies_a_block_only_with_a_verified_commit() -> None:
    good = block_one(FOUR)
    forged = Commit(
        1, 0, good.hash, (CommitSig("b", b"x" * 32), *commit_for(good, "cd").signatures)
    )
    refusals = {
        "not signed by a quorum": (good, commit_for(good, "bc")),
        "bad signature by b": (good, forged),
        "bad signer 'e'": (good, commit_for(good, "bce")),
        "the commit is for another block": (good, commit_for(block_one(FOUR, (b"y=2",)), "bcd")),
        "wrong app hash": (block_one(FOUR, app_hash=b"\x00" * 32), commit_for(good, "bcd")),
    }
    node = core(FOUR, "a")
    node.handle(Start(), 0.0)
    for reason, (blk, commit) in refusals.items():
        effects = node.handle(Receive("b", BlockResponse(blk, commit)), 1.0)
        assert not delivered(effects, Committed), reason
        assert any(reason in getattr(e, "text", "") for e in effects), reason
    effects = node.handle(Receive("b", BlockResponse(good, commit_for(good, "bcd"))), 1.0)
    assert [c.height for c in delivered(effects, Committed)] == [1]  # type: ignore[attr-defined]
    assert node.height == 2


def test_validator_changes_take_effect_two_heights_later() -> None:
    node = core()
    node.handle(Start(), 0.0)
    tx = b"validator:e:" + SIGNERS["e"].public_key.hex().encode() + b":1"
    run(node, Request(SubmitTx(tx)), 0.1)
    assert "e" not in node.validator_sets[2]
    assert "e" in node.validator_sets[3]


def test_two_proposals_from_one_proposer_are_evidence() -> None:
    node = core(FOUR, "a")
    node.handle(Start(), 0.0)
    proposals = []
    for txs in ((b"x=1",), (b"x=2",)):
        blk = block_one(FOUR, txs)
        unsigned = Proposal(1, 0, -1, blk, "b", b"")
        proposals.append(
            Proposal(1, 0, -1, blk, "b", SIGNERS["b"].sign(unsigned.sign_bytes("four")))
        )
    node.handle(Receive("b", proposals[0]), 0.1)
    effects = node.handle(Receive("c", proposals[1]), 0.2)
    assert delivered(effects, EvidenceFound) == [EvidenceFound("b", 1, 0, "proposal")]


def test_timeouts_grow_with_the_round() -> None:
    config = ConsensusConfig()
    assert [config.timeout_s(Step.PROPOSE, r) for r in range(3)] == [1.0, 1.25, 1.5]
    assert [config.timeout_s(Step.PRECOMMIT, r) for r in range(3)] == [0.5, 0.75, 1.0]
