"""Catching up (sans-IO, for :class:`~swarmlearn.consensus.tendermint.core.ConsensusCore`):
status answers and committed blocks taken from a peer.

A node that hears a peer's :class:`Status` answers by where the peer stands: behind, it gets
the next committed block with its commit; at the same height, the proposals and votes it may
have missed (and the prevotes that justify a re-proposal); ahead, this node asks in turn. A
block from a peer is applied only if it is valid at this height and its commit carries
verified signatures of a quorum of this height's validators.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from swarmlearn.consensus.tendermint.restart import WAL
from swarmlearn.consensus.tendermint.types import (
    Block,
    BlockResponse,
    Commit,
    Status,
    ValidatorSet,
    VoteType,
)
from swarmlearn.consensus.tendermint.wal import Heard
from swarmlearn.sansio import Effect, Log, Persist, Send

if TYPE_CHECKING:
    from swarmlearn.consensus.tendermint.core import ConsensusCore


def answer_status(core: ConsensusCore, sender: str, status: Status) -> list[Effect]:
    if status.height < core.height:
        found = core.blocks.get(status.height)
        return [Send(sender, BlockResponse(*found))] if found else []
    if status.height > core.height:
        return core.ask_for_blocks(sender)
    effects: list[Effect] = []
    polkas: set[tuple[int, bytes]] = set()
    for round_, received in core.machine.all_proposals():
        if round_ >= status.round:
            if not (round_ == status.round and status.proposal):
                effects.append(Send(sender, received.proposal))
            if received.proposal.valid_round >= 0:  # the polka that justifies it (line 28)
                polkas.add((received.proposal.valid_round, received.proposal.block.hash))
    position = core.validators.position
    held = {VoteType.PREVOTE: status.prevotes, VoteType.PRECOMMIT: status.precommits}
    for vote in core.keeper.votes():
        justifies = vote.kind == VoteType.PREVOTE and (vote.round, vote.value) in polkas
        place = position.get(vote.validator, -1)
        if vote.round == status.round and has_bit(held[vote.kind], place):
            continue  # the peer said it holds this validator's vote of the round
        if vote.round >= status.round or justifies:
            effects.append(Send(sender, vote))
    return effects


def voter_bits(validators: ValidatorSet, voters: Iterable[str]) -> bytes:
    """A bit per validator of ``validators`` (in its order): set for each of ``voters``."""
    bits = bytearray((len(validators) + 7) // 8)
    for node in voters:
        i = validators.position.get(node)
        if i is not None:
            bits[i // 8] |= 1 << (i % 8)
    return bytes(bits)


def has_bit(bits: bytes, i: int) -> bool:
    return 0 <= i < 8 * len(bits) and bool(bits[i // 8] >> (i % 8) & 1)


def catch_up(core: ConsensusCore, sender: str, block: Block, commit: Commit) -> list[Effect]:
    if block.header.height != core.height or commit.height != core.height:
        return []
    problem = core.block_problem(block) or commit_problem(core, core.validators, block.hash, commit)
    if problem:
        return [Log(f"block {core.height} from {sender} refused: {problem}", "warning")]
    effects: list[Effect] = [Persist(WAL, Heard(BlockResponse(block, commit)))]
    effects += core.commit_block(block, commit)
    return [*effects, Send(sender, core.status())]  # and the next one, please


def commit_problem(
    core: ConsensusCore, validators: ValidatorSet, block_hash: bytes, commit: Commit
) -> str:
    """Why ``commit`` is no proof that ``validators`` decided ``block_hash`` ("" if it is)."""
    if commit.value != block_hash:
        return "the commit is for another block"
    seen: set[str] = set()
    power = 0
    for vote in commit.votes():
        if vote.validator in seen or vote.validator not in validators:
            return f"bad signer {vote.validator!r}"
        key = validators.by_node[vote.validator].public_key
        if not core.verifier.verify(key, vote.signature, vote.sign_bytes(core.chain_id)):
            return f"bad signature by {vote.validator}"
        seen.add(vote.validator)
        power += validators.power(vote.validator)
    return "" if validators.is_quorum(power) else "not signed by a quorum"
