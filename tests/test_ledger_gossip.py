"""The ledger over gossip, unit steps: what the adapter's validation hooks accept, reject and
ignore, block parts, and the topics of a seat (the swarms: test_ledger_gossip_sim.py)."""

from __future__ import annotations

import dataclasses
import random

from swarmlearn.consensus.tendermint.app import KeyValueApp
from swarmlearn.consensus.tendermint.core import ConsensusCore
from swarmlearn.consensus.tendermint.crypto import SimSigner, SimVerifier, VerifiedCache
from swarmlearn.consensus.tendermint.events import SubmitTx
from swarmlearn.consensus.tendermint.over_gossip import (
    TOPIC_BLOCKS,
    TOPIC_PROPOSALS,
    TOPIC_TXS,
    TOPIC_VOTES,
    BlockPart,
    LedgerGossipConfig,
    LedgerOverGossip,
    encode,
)
from swarmlearn.consensus.tendermint.simulation import genesis_for
from swarmlearn.consensus.tendermint.types import (
    Block,
    BlockHeader,
    BlockResponse,
    Commit,
    CommitSig,
    Proposal,
    Tx,
    Vote,
    VoteType,
)
from swarmlearn.p2p.gossip import Gossip, GossipMessage, Subscriptions, Verdict
from swarmlearn.p2p.node import P2PNode
from swarmlearn.p2p.peertable import Connected, PeerTable, PeerTableConfig
from swarmlearn.sansio import Receive, Request, Send, Start

VALIDATORS = ("v0", "v1", "v2", "v3")


def adapter(
    me: str, part_bytes: int = 1024, verifier: SimVerifier | VerifiedCache | None = None
) -> LedgerOverGossip:
    rng = random.Random(7)
    verifier = verifier or SimVerifier()
    consensus = ConsensusCore(
        genesis_for(VALIDATORS), SimSigner(me), verifier, KeyValueApp(), rng, ()
    )
    p2p = P2PNode(rng, PeerTable(me, rng, PeerTableConfig()), Gossip(me, rng))
    return LedgerOverGossip(consensus, p2p, LedgerGossipConfig(part_bytes=part_bytes))


def signed_vote(signer: str, height: int = 1, value: bytes | None = b"\x01" * 32) -> Vote:
    vote = Vote(VoteType.PREVOTE, height, 0, value, signer, b"")
    return dataclasses.replace(vote, signature=SimSigner(signer).sign(vote.sign_bytes("sim-chain")))


def big_proposal(node: LedgerOverGossip) -> Proposal:
    core = node.consensus
    txs = tuple(f"k{i}={'x' * 300}".encode() for i in range(20))
    header = BlockHeader("sim-chain", 1, 1, "v2", b"", b"", b"", core.validators.hash)
    proposer = core.validators.proposer(1, 0)
    unsigned = Proposal(1, 0, -1, Block(header, txs), proposer, b"")
    return dataclasses.replace(
        unsigned, signature=SimSigner(proposer).sign(unsigned.sign_bytes("sim-chain"))
    )


def check(node: LedgerOverGossip, topic: str, data: bytes) -> Verdict:
    return node.gossip.validators[topic]("peer", topic, data)


def test_votes_from_validators_pass_and_forgeries_are_rejected() -> None:
    node = adapter("f0")
    assert check(node, TOPIC_VOTES, encode(signed_vote("v1"))) is Verdict.ACCEPT
    forged = dataclasses.replace(
        signed_vote("v1"), value=b"\x02" * 32
    )  # the signature no longer fits
    assert check(node, TOPIC_VOTES, encode(forged)) is Verdict.REJECT
    assert check(node, TOPIC_VOTES, encode(signed_vote("f9"))) is Verdict.REJECT  # no seat
    assert check(node, TOPIC_VOTES, b"garbage") is Verdict.REJECT
    assert check(node, TOPIC_VOTES, encode(signed_vote("v1", height=9))) is Verdict.IGNORE
    assert node.counters.rejected == {TOPIC_VOTES: 3}
    assert node.counters.ignored == {TOPIC_VOTES: 1}


def test_a_vote_is_verified_once_by_the_hook_and_not_again_by_the_core() -> None:
    """Gossip's hook checks the vote's signature; the consensus core's check of the same
    (key, signature, bytes) is a lookup. A forgery is checked, and refused, every time."""
    verifier = VerifiedCache(SimVerifier())
    node = adapter("v0", verifier=verifier)
    vote = signed_vote("v1")
    assert check(node, TOPIC_VOTES, encode(vote)) is Verdict.ACCEPT
    assert (verifier.checks, verifier.hits) == (1, 0)
    node.consensus.handle(Receive("v1", vote), 0.0)  # the delivery that follows the ACCEPT
    assert (verifier.checks, verifier.hits) == (1, 1)
    assert vote in node.consensus.keeper.votes(vote.round)
    forged = dataclasses.replace(vote, value=b"\x02" * 32)
    for _ in range(2):
        assert check(node, TOPIC_VOTES, encode(forged)) is Verdict.REJECT
    assert (verifier.checks, verifier.hits) == (3, 1)
    stolen = dataclasses.replace(signed_vote("v2"), signature=vote.signature)  # v1's on v2's
    assert check(node, TOPIC_VOTES, encode(stolen)) is Verdict.REJECT


def test_the_verified_table_is_bounded_first_in_first_out() -> None:
    verifier = VerifiedCache(SimVerifier(), size=2)
    votes = [signed_vote(v) for v in ("v1", "v2", "v3")]
    key = {v: SimSigner(v).public_key for v in ("v1", "v2", "v3")}
    for vote in votes:
        assert verifier.verify(key[vote.validator], vote.signature, vote.sign_bytes("sim-chain"))
    assert verifier.verify(key["v3"], votes[2].signature, votes[2].sign_bytes("sim-chain"))
    assert verifier.verify(key["v1"], votes[0].signature, votes[0].sign_bytes("sim-chain"))
    assert (verifier.checks, verifier.hits) == (4, 1)  # v1 had left the table


def test_a_proposal_is_cut_into_signed_parts_that_reassemble_in_any_order() -> None:
    proposer = big_proposal(adapter("v0")).proposer
    sender = adapter(proposer)
    proposal = big_proposal(sender)
    parts = sender._cut(proposal)
    assert len(parts) > 3
    receiver = adapter("f0")
    assembled = None
    for part in random.Random(1).sample(parts, len(parts)):
        assert check(receiver, TOPIC_PROPOSALS, encode(part)) is Verdict.ACCEPT
        assembled = receiver._assemble(part)
    assert assembled == proposal
    assert receiver.part_sets == {}


def test_tampered_parts_and_parts_not_signed_by_the_proposer_are_rejected() -> None:
    proposer = big_proposal(adapter("v0")).proposer
    sender = adapter(proposer)
    part = sender._cut(big_proposal(sender))[1]
    receiver = adapter("f0")
    tampered = dataclasses.replace(part, data=part.data[:-1] + b"!")
    assert check(receiver, TOPIC_PROPOSALS, encode(tampered)) is Verdict.REJECT
    impostor = next(v for v in VALIDATORS if v != proposer)
    header = dataclasses.replace(part.header, proposer=impostor)
    header = dataclasses.replace(
        header, signature=SimSigner(impostor).sign(header.sign_bytes("sim-chain"))
    )
    assert check(receiver, TOPIC_PROPOSALS, encode(BlockPart(header, 1, part.data))) is (
        Verdict.REJECT
    )
    assert receiver.counters.rejected == {TOPIC_PROPOSALS: 2}


def test_a_follower_subscribes_to_blocks_only_and_a_validator_to_every_ledger_topic() -> None:
    follower, validator = adapter("f0"), adapter("v0")
    follower.handle(Start(), 0.0)
    validator.handle(Start(), 0.0)
    assert follower.gossip.topics == {TOPIC_BLOCKS}
    assert len(validator.gossip.topics) == 4


def decided(node: LedgerOverGossip, signers: tuple[str, ...], height: int = 1) -> BlockResponse:
    proposal = big_proposal(node)
    block = proposal.block
    if height != 1:
        header = dataclasses.replace(block.header, height=height)
        block = Block(header, block.txs)
    sigs = []
    for signer in signers:
        vote = Vote(VoteType.PRECOMMIT, height, 0, block.hash, signer, b"")
        sigs.append(CommitSig(signer, SimSigner(signer).sign(vote.sign_bytes("sim-chain"))))
    return BlockResponse(block, Commit(height, 0, block.hash, tuple(sigs)))


def test_a_decided_block_needs_a_quorum_of_valid_signatures() -> None:
    node = adapter("f0")
    assert check(node, TOPIC_BLOCKS, encode(decided(node, VALIDATORS[:3]))) is Verdict.ACCEPT
    short = decided(node, VALIDATORS[:2])  # 2 of 4 is no quorum
    assert check(node, TOPIC_BLOCKS, encode(short)) is Verdict.REJECT
    good = decided(node, VALIDATORS[:3])
    forged = dataclasses.replace(good, commit=dataclasses.replace(good.commit, value=b"\x07" * 32))
    assert check(node, TOPIC_BLOCKS, encode(forged)) is Verdict.REJECT
    ahead = decided(node, VALIDATORS[:3], height=5)  # no validator set known that far ahead
    assert check(node, TOPIC_BLOCKS, encode(ahead)) is Verdict.IGNORE


def test_a_publish_goes_unforwarded_only_when_every_other_validator_is_a_linked_peer() -> None:
    node = adapter("v0")
    node.handle(Start(), 0.0)

    def link(peer: str) -> None:
        conn = len(node.p2p.peers.conns) + 1
        node.handle(Request(Connected(conn, peer, peer.encode(), False, None)), 0.0)
        node.handle(Receive(peer, Subscriptions((TOPIC_TXS,))), 0.0)

    def forwards(tx: bytes) -> set[bool]:
        effects = node.handle(Request(SubmitTx(tx)), 0.1)
        messages = [e.message for e in effects if isinstance(e, Send)]
        return {m.forward for m in messages if isinstance(m, GossipMessage)}

    link("v1")
    link("v2")
    assert forwards(b"a=1") == {True}  # v3 is not linked: the mesh must carry it on
    link("v3")
    assert forwards(b"b=2") == {False}  # every other validator hears it from this node
    assert node.counters.unforwarded == 1
    # A linked validator whose score went negative is skipped by the flood: forward again.
    node.gossip.peers["v3"].score.misbehaviour = 2
    assert forwards(b"c=3") == {True}


def test_transactions_the_application_refuses_are_dropped_not_forwarded() -> None:
    node = adapter("v0")
    assert check(node, TOPIC_TXS, encode(Tx(b"a=1"))) is Verdict.ACCEPT
    assert check(node, TOPIC_TXS, encode(Tx(b"no equals sign"))) is Verdict.IGNORE
    node.consensus.is_forgery = lambda reason: True
    assert check(node, TOPIC_TXS, encode(Tx(b"no equals sign"))) is Verdict.REJECT
