"""The ledger's check-in lifecycle (swarm_app + swarm_rounds), as tables of blocks.

A check-in belongs to a trainer session: it leaves an open round when the session goes away
(``CheckOut``) or its ``wait_ms`` passes; an open round left with none is abandoned; a later
check-in, with any minPeers, opens a fresh round; ``RESET CONTRACT`` ends every round; a
re-run's identical weights are a new transaction (session, nonce).
"""

from __future__ import annotations

from dataclasses import replace

import cbor2
import pytest

from swarmlearn.consensus.ledger.app import DEFAULT_CONTRACT
from swarmlearn.consensus.ledger.rounds import ABANDONED, RoundStatus
from swarmlearn.consensus.ledger.txs import CheckIn, CheckOut, Merged, ResetContract
from swarmlearn.errors import RemoteProtocolError
from swarmlearn.p2p.wire import decode_header, encode_header
from tests.test_swarm_app import (
    LAYOUT,
    Ledger,
    Swarm,
    check_in,
    joined,
    merged,
    round_of,
    signed,
)
from tests.test_swarm_app import swarm as swarm

EARLIER = f"a round of an earlier run of contract {DEFAULT_CONTRACT!r} (RESET CONTRACT ended it)"
Step = tuple[tuple[bytes, ...], int, dict[str, object]]


def check_out(swarm: Swarm, name: str, number: int, session: int) -> bytes:
    return signed(swarm.people[name], CheckOut(DEFAULT_CONTRACT, number, session, "gone"))


def state_of(ledger: Ledger, swarm: Swarm, number: int) -> dict[str, object]:
    record = round_of(ledger, number)
    names = {str(person.peer_id): name for name, person in swarm.people.items()}
    return {
        "status": record.status,
        "in": "".join(sorted(names[node] for node in record.checkins)),
        "reason": record.reason,
    }


def run(ledger: Ledger, swarm: Swarm, steps: list[Step], number: int = 1) -> None:
    """Each step: a block of ``txs`` ``after_ms`` after the last, then the round looks so."""
    for index, (txs, after_ms, expected) in enumerate(steps):
        ledger.block(*txs, after_ms=after_ms)
        got = state_of(ledger, swarm, number)
        assert {k: got[k] for k in expected} == expected, f"step {index}: {got}"


def test_check_ins_expire_after_their_wait_and_an_empty_open_round_is_abandoned(
    swarm: Swarm,
) -> None:
    ledger = joined(swarm, "a", "b", "c")
    a = check_in(swarm, "a", 1, min_peers=4, wait_ms=5_000, session=1, nonce=1)
    b = check_in(swarm, "b", 1, min_peers=4, wait_ms=8_000, session=2, nonce=1)
    run(
        ledger,
        swarm,
        [
            ((a, b), 100, {"status": RoundStatus.OPEN, "in": "ab"}),
            ((), 4_900, {"status": RoundStatus.OPEN, "in": "ab"}),  # 5 s after a's block
            ((), 100, {"status": RoundStatus.OPEN, "in": "b"}),
            ((), 3_000, {"status": RoundStatus.FAILED, "in": "", "reason": ABANDONED}),
        ],
    )
    # A later check-in with the right minPeers starts a fresh round, which closes.
    ledger.block(*(check_in(swarm, n, 2, min_peers=3, session=9) for n in "abc"))
    assert round_of(ledger, 2).status == RoundStatus.EXCHANGING
    assert ledger.refusals() == []


def test_a_session_that_goes_away_takes_its_check_in_and_only_its_own(swarm: Swarm) -> None:
    ledger = joined(swarm, "a", "b", "c")
    run(
        ledger,
        swarm,
        [
            ((check_in(swarm, "a", 1, min_peers=4, session=7),), 100, {"in": "a"}),
            ((check_in(swarm, "b", 1, min_peers=4, session=3),), 100, {"in": "ab"}),
            ((check_out(swarm, "a", 1, 8),), 100, {"in": "ab"}),  # another session: no
            ((check_out(swarm, "a", 1, 7),), 100, {"in": "b", "status": RoundStatus.OPEN}),
            ((check_out(swarm, "b", 1, 3),), 100, {"status": RoundStatus.FAILED}),
            ((check_out(swarm, "b", 1, 3),), 100, {"reason": ABANDONED}),  # again: refused
        ],
    )
    assert ledger.refusals() == ["no open check-in of session 8", "no open check-in of session 3"]


def test_a_round_that_closed_keeps_its_check_ins(swarm: Swarm) -> None:
    ledger = joined(swarm, "a", "b", "c")
    ledger.block(*(check_in(swarm, n, 1, wait_ms=1_000, session=5) for n in "abc"))
    assert round_of(ledger).status == RoundStatus.EXCHANGING
    ledger.block(check_out(swarm, "a", 1, 5), after_ms=5_000)
    record = round_of(ledger)
    assert record.status == RoundStatus.EXCHANGING
    assert len(record.checkins) == 3
    assert ledger.refusals() == ["no open check-in of session 5"]


def test_a_check_out_below_quorum_restarts_the_grace_period(swarm: Swarm) -> None:
    ledger = joined(swarm, "a", "b", "c")
    ledger.block(check_in(swarm, "a", 1, session=1), check_in(swarm, "b", 1, session=2))
    assert round_of(ledger).quorum_ms is not None
    ledger.block(check_out(swarm, "b", 1, 2), after_ms=1_000)
    assert round_of(ledger).quorum_ms is None
    ledger.block(after_ms=1_500)  # past the first quorum's grace: still open, one short
    assert round_of(ledger).status == RoundStatus.OPEN
    ledger.block(check_in(swarm, "c", 1, session=3), after_ms=100)
    ledger.block(after_ms=2_100)
    assert round_of(ledger).status == RoundStatus.EXCHANGING


def test_reset_contract_ends_open_rounds_and_a_rerun_checks_in_again(swarm: Swarm) -> None:
    ledger = joined(swarm, "a", "b", "op")
    first = check_in(swarm, "a", 1, session=1, nonce=1)
    ledger.block(first)
    assert round_of(ledger).status == RoundStatus.OPEN
    ledger.block(signed(swarm.people["op"], ResetContract(DEFAULT_CONTRACT, nonce=1)))
    contract = ledger.app.state.contracts[DEFAULT_CONTRACT]
    assert contract.rounds == {}
    assert contract.generation == 1
    # The re-run of the same seeded script: the same weights, another session: a new tx.
    rerun = check_in(swarm, "a", 1, session=2, nonce=1, generation=1)
    assert rerun != first
    stale = check_in(swarm, "b", 1, session=3)  # sent before the reset, late: refused
    ledger.block(rerun, stale, check_in(swarm, "b", 1, session=4, generation=1))
    assert ledger.refusals() == [EARLIER]
    assert round_of(ledger).status == RoundStatus.EXCHANGING  # every learner is in


@pytest.mark.parametrize(
    ("second", "refusal"),
    [
        ({"session": 1, "nonce": 1}, "already checked in to round 1"),  # the same check-in
        ({"session": 2, "nonce": 1}, ""),  # a restarted trainer, same weights: replaces
        ({"session": 1, "nonce": 2}, ""),  # the same trainer, again (after its syncTimeout)
        ({"session": 1, "nonce": 1, "root": b"s" * 32}, ""),  # other weights
    ],
)
def test_a_nodes_second_check_in_replaces_its_first_unless_it_is_the_same(
    swarm: Swarm, second: dict[str, object], refusal: str
) -> None:
    ledger = joined(swarm, "a", "b", "c")
    ledger.block(check_in(swarm, "a", 1, session=1, nonce=1, wait_ms=1_000))
    root = second.pop("root", b"r" * 32)
    assert isinstance(root, bytes)
    ledger.block(check_in(swarm, "a", 1, root, wait_ms=60_000, **second), after_ms=500)
    assert ledger.refusals() == ([refusal] if refusal else [])
    ledger.block(after_ms=1_000)  # past the first check-in's wait
    assert len(round_of(ledger).checkins) == (0 if refusal else 1)


def test_after_a_reset_the_earlier_runs_reports_are_refused_and_the_same_ones_are_new(
    swarm: Swarm,
) -> None:
    """A re-run of a seeded script merges to the same root: its Merged must be a new
    transaction; a late report of the earlier run must not land in the new run's round."""
    ledger = joined(swarm, "a", "b", "op")
    ledger.block(*(check_in(swarm, n, 1, session=1) for n in "ab"))
    ledger.block(*(merged(swarm, n, b"m" * 32) for n in "ab"))
    assert round_of(ledger).status == RoundStatus.DONE
    ledger.block(signed(swarm.people["op"], ResetContract(DEFAULT_CONTRACT, nonce=2)))
    ledger.block(*(check_in(swarm, n, 1, session=2, generation=1) for n in "ab"))
    late = merged(swarm, "a", b"m" * 32)  # generation 0: the earlier run's
    again = [signed(swarm.people[n], Merged(DEFAULT_CONTRACT, 1, 1, b"m" * 32, 1)) for n in "ab"]
    assert late not in again
    ledger.block(late, check_in(swarm, "a", 2, session=3), *again)
    earlier = (
        f"a round of an earlier run of contract {DEFAULT_CONTRACT!r} (RESET CONTRACT ended it)"
    )
    assert ledger.refusals() == [earlier, earlier]
    assert round_of(ledger).status == RoundStatus.DONE


def test_a_check_in_from_before_sessions_still_decodes_with_the_new_fields_defaulted() -> None:
    """Ledgers and peers of the previous version send CheckIn without session, nonce, wait
    and generation: they decode (defaults), so an old chain replays; too few fields do not."""
    new = CheckIn(
        DEFAULT_CONTRACT, 1, b"r" * 32, 1, 2, LAYOUT, 216, "mean", False, 5, 7, 8, nonce=6
    )
    tag, *fields = cbor2.loads(encode_header(new))
    old = decode_header(cbor2.dumps([tag, *fields[:9]], canonical=True))
    assert old == replace(new, session=0, nonce=0, wait_ms=0, generation=0)
    with pytest.raises(RemoteProtocolError):
        decode_header(cbor2.dumps([tag, *fields[:6]], canonical=True))
