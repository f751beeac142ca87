"""Types and the vote keeper: quorum arithmetic, validation order, equivocation, thresholds."""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter

import pytest

from swarmlearn.consensus.tendermint.crypto import SimVerifier
from swarmlearn.consensus.tendermint.types import ValidatorSet, VoteType
from swarmlearn.consensus.tendermint.votekeeper import Added, Threshold, ThresholdKind, VoteKeeper
from tests.consensus_helpers import CHAIN, block, validator_set, vote

PREVOTE, PRECOMMIT = VoteType.PREVOTE, VoteType.PRECOMMIT
H = block().hash


class CountingVerifier(SimVerifier):
    def __init__(self) -> None:
        self.calls = 0

    def verify(self, public_key: bytes, signature: bytes, data: bytes) -> bool:
        self.calls += 1
        return super().verify(public_key, signature, data)


def keeper(validators: ValidatorSet | None = None) -> tuple[VoteKeeper, CountingVerifier]:
    verifier = CountingVerifier()
    return VoteKeeper(CHAIN, 1, validators or validator_set(), verifier), verifier


def test_quorum_is_more_than_two_thirds_in_integers() -> None:
    four = validator_set()
    assert [four.is_quorum(p) for p in range(5)] == [False, False, False, True, True]
    assert [four.is_one_honest(p) for p in range(5)] == [False, False, True, True, True]
    weighted = validator_set(powers={"a": 3, "b": 1, "c": 1, "d": 1})  # total 6
    assert not weighted.is_quorum(4)  # 4/6 is exactly 2/3: not more
    assert weighted.is_quorum(5)


def test_sign_bytes_carry_the_chain_id() -> None:
    one = vote("a", PREVOTE, 0, H)
    assert one.sign_bytes("chain-1") != one.sign_bytes("chain-2")
    k, _ = keeper()
    other_chain = vote("a", PREVOTE, 0, H, chain="another")
    assert k.add(other_chain, 0).added is Added.INVALID


def test_proposers_follow_weighted_round_robin() -> None:
    weighted = validator_set(powers={"a": 2, "b": 1, "c": 1, "d": 4})
    turns = Counter(weighted.proposer(h, 0) for h in range(1, 801))
    assert turns == {"a": 200, "b": 100, "c": 100, "d": 400}
    sequence = [weighted.proposer(h, 0) for h in range(1, 33)]
    longest_run = max(len(list(run)) for _, run in itertools.groupby(sequence))
    assert longest_run <= 2  # interleaved: d (half the power) never proposes 4 times in a row
    assert weighted.proposer(5, 1) == weighted.proposer(6, 0)  # the next round, the next turn


def test_cheap_checks_come_before_the_signature() -> None:
    k, verifier = keeper()
    assert k.add(vote("a", PREVOTE, 0, H, height=2), 0).reason == "height 2, keeper is at 1"
    assert "outside" in k.add(vote("a", PREVOTE, 500, H), 0).reason
    assert "not a validator" in k.add(vote("e", PREVOTE, 0, H), 0).reason
    assert "neither nil" in k.add(vote("a", PREVOTE, 0, b"short"), 0).reason
    assert verifier.calls == 0
    forged = dataclasses.replace(vote("a", PREVOTE, 0, H), signature=b"x" * 32)
    assert k.add(forged, 0).reason == "bad signature"
    assert verifier.calls == 1


def test_duplicates_are_ignored_without_crypto_and_count_once() -> None:
    k, verifier = keeper()
    first = vote("a", PREVOTE, 0, H)
    assert k.add(first, 0).added is Added.COUNTED
    assert k.add(first, 0).added is Added.DUPLICATE
    assert verifier.calls == 1
    assert k.power_for(0, PREVOTE, H) == 1


def test_equivocation_is_evidence_and_counts_for_each_value_once() -> None:
    k, _ = keeper()
    assert k.add(vote("a", PREVOTE, 0, H), 0).added is Added.COUNTED
    result = k.add(vote("a", PREVOTE, 0, None), 0)
    assert result.added is Added.EQUIVOCATION
    (evidence,) = k.evidence
    assert (evidence.first.value, evidence.second.value) == (H, None)
    # Each message counts for its value (as in the paper); the validator counts once in total.
    assert k.power_for(0, PREVOTE, H) == 1
    assert k.power_for(0, PREVOTE, None) == 1
    for node in "bc":
        k.add(vote(node, PREVOTE, 0, None), 0)
    assert k.has_quorum_for(0, PREVOTE, None)  # a, b, c
    assert not k.has_quorum_any(0, PRECOMMIT)
    k.add(vote("d", PRECOMMIT, 0, H), 0)
    k.add(vote("a", PRECOMMIT, 0, H), 0)
    k.add(vote("a", PRECOMMIT, 0, None), 0)
    assert not k.has_quorum_any(0, PRECOMMIT)  # a counted once: d, a


def test_a_validator_cannot_flood_a_round_with_values() -> None:
    k, _ = keeper()
    results = [k.add(vote("a", PREVOTE, 0, block(tag=t).hash), 0).added for t in range(6)]
    assert results == [Added.COUNTED] + [Added.EQUIVOCATION] * 3 + [Added.INVALID] * 2


def test_thresholds_are_reported_once_each() -> None:
    k, _ = keeper()
    reports = [k.add(vote(n, PREVOTE, 0, H), 0).thresholds for n in "abcd"]
    assert reports[0] == ()
    assert reports[1] == (Threshold(ThresholdKind.ONE_HONEST_ROUND, 0),)
    assert set(reports[2]) == {
        Threshold(ThresholdKind.QUORUM_VALUE, 0, PREVOTE, H),
        Threshold(ThresholdKind.QUORUM_ANY, 0, PREVOTE),
    }
    assert reports[3] == ()  # already crossed
    assert k.has_quorum_for(0, PREVOTE, H)
    assert not k.has_quorum_any(0, PRECOMMIT)


def test_a_quorum_of_any_votes_without_a_value_quorum() -> None:
    k, _ = keeper()
    for node, value in zip("abc", (H, None, block(tag=1).hash), strict=True):
        k.add(vote(node, PREVOTE, 0, value), 0)
    assert k.has_quorum_any(0, PREVOTE)
    assert not k.has_quorum_for(0, PREVOTE, H)
    assert not k.has_quorum_for(0, PREVOTE, None)


@pytest.mark.parametrize("nodes", ["ab", "abc"])
def test_f_plus_one_of_a_round(nodes: str) -> None:
    k, _ = keeper()
    for node in nodes:
        k.add(vote(node, PRECOMMIT, 3, None), 0)
    assert k.has_one_honest(3)
    assert not k.has_one_honest(2)
