"""Builders for consensus tests: simulated validators that sign, blocks, votes and proposals."""

from __future__ import annotations

from swarmlearn.consensus.tendermint.crypto import SimSigner
from swarmlearn.consensus.tendermint.types import (
    Block,
    BlockHeader,
    Proposal,
    Validator,
    ValidatorSet,
    Vote,
    VoteType,
    tx_root,
)

CHAIN = "test-chain"
NODES = ("a", "b", "c", "d")
SIGNERS = {node: SimSigner(node) for node in ("a", "b", "c", "d", "e", "f", "g")}


def validator_set(
    nodes: tuple[str, ...] = NODES, powers: dict[str, int] | None = None
) -> ValidatorSet:
    powers = powers or {}
    return ValidatorSet(Validator(n, SIGNERS[n].public_key, powers.get(n, 1)) for n in nodes)


def block(height: int = 1, tag: int = 0, txs: tuple[bytes, ...] = ()) -> Block:
    header = BlockHeader(CHAIN, height, 1000 + tag, "a", b"", tx_root(txs), b"", b"")
    return Block(header, txs)


def vote(
    node: str, kind: VoteType, round_: int, value: bytes | None, height: int = 1, chain: str = CHAIN
) -> Vote:
    unsigned = Vote(kind, height, round_, value, node, b"")
    return Vote(kind, height, round_, value, node, SIGNERS[node].sign(unsigned.sign_bytes(chain)))


def proposal(
    node: str, round_: int, blk: Block, valid_round: int = -1, height: int = 1
) -> Proposal:
    unsigned = Proposal(height, round_, valid_round, blk, node, b"")
    return Proposal(
        height, round_, valid_round, blk, node, SIGNERS[node].sign(unsigned.sign_bytes(CHAIN))
    )
