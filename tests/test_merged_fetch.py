"""A node that missed a round's merge (paused past its deadline, late, dissenting) fetches the
merged model the ledger settled on with bounded tries (roles/sl/ends.py), then tells its
trainer the round failed for it: never a fetch without end (issue 16, part 4).

The SL round core is driven directly (sans-IO) over a ledger state written by hand: the round
is DONE without this node, whose own round state still waits for the outcome.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from swarmlearn.consensus.ledger.app import DEFAULT_CONTRACT, SwarmState
from swarmlearn.consensus.ledger.rounds import (
    CheckInRecord,
    ContractRecord,
    RoundRecord,
    RoundStatus,
)
from swarmlearn.consensus.ledger.txs import CreateContract
from swarmlearn.merge import ModelState, build_manifest, flatten, layout_of
from swarmlearn.merge.manifest import chunk_hashes, manifest_root
from swarmlearn.roles.sl.core import SLRoundCore
from swarmlearn.roles.sl.ends import FETCH_BACKOFF_S, FETCH_STALL_S, FETCH_TRIES
from swarmlearn.roles.sl.messages import (
    Contribute,
    FetchMerged,
    LedgerChanged,
    MergedPiece,
    MergedUnavailable,
    RoundDone,
    RoundFailed,
)
from swarmlearn.roles.sl.state import RoundState
from swarmlearn.roles.sl.timers import FetchTry
from swarmlearn.sansio import Deliver, Receive, Request, Send, SetTimer, TimerFired

ME, PEER_A, PEER_B = "me" * 32, "aa" * 32, "bb" * 32
NUMBER = 20


class PausedNode:
    """This node checked in to round 20; the others finished it without it."""

    def __init__(self) -> None:
        rng = np.random.default_rng(16)
        mine = ModelState({"w": rng.standard_normal(3000, dtype=np.float32)})
        merged = ModelState({"w": rng.standard_normal(3000, dtype=np.float32)})
        self.layout = layout_of(mine, chunk_bytes=4096)
        flat = bytes(flatten(mine, self.layout))
        self.merged = bytes(flatten(merged, self.layout))
        self.root = build_manifest(self.layout, self.merged).root
        hashes = chunk_hashes(self.layout, flat)
        own_root = manifest_root(self.layout, hashes)
        state = SwarmState()
        contract = ContractRecord(CreateContract(DEFAULT_CONTRACT))
        record = RoundRecord(DEFAULT_CONTRACT, NUMBER, "mean", 0)
        record.checkins = {
            node: CheckInRecord(own_root if node == ME else b"x" * 32, 1, 2, 0)
            for node in (ME, PEER_A, PEER_B)
        }
        record.status = RoundStatus.DONE
        record.participants = (PEER_A, PEER_B)  # re-planned without the paused node
        record.merged = {PEER_A: self.root, PEER_B: self.root}
        record.merged_root = self.root
        contract.rounds[NUMBER] = record
        state.contracts[DEFAULT_CONTRACT] = contract
        app: Any = SimpleNamespace(state=state)
        self.core = SLRoundCore(ME, app, sign=lambda body: b"signed")
        contribution = Contribute(DEFAULT_CONTRACT, flat, self.layout)
        self.core.rounds[(DEFAULT_CONTRACT, NUMBER)] = RoundState(
            DEFAULT_CONTRACT, NUMBER, contribution, hashes, own_root
        )
        self.now = 100.0

    def handle(self, event: Any) -> list[Any]:
        return self.core.handle(event, self.now)

    def block(self) -> list[Any]:
        return self.handle(Request(LedgerChanged()))


def asked(effects: list[Any]) -> list[str]:
    return [e.to for e in effects if isinstance(e, Send) and isinstance(e.message, FetchMerged)]


def fetch_timers(effects: list[Any]) -> list[SetTimer]:
    return [e for e in effects if isinstance(e, SetTimer) and isinstance(e.tag, FetchTry)]


def outcomes(effects: list[Any]) -> list[Any]:
    return [
        e.value
        for e in effects
        if isinstance(e, Deliver) and isinstance(e.value, RoundDone | RoundFailed)
    ]


def test_a_fetch_that_finds_no_model_ends_in_bounded_tries() -> None:
    node = PausedNode()
    first = node.block()
    assert asked(first) == [PEER_A]
    # Every later block while the fetch runs asks no one again (it asked at every block).
    for _ in range(50):
        assert asked(node.block()) == []
    effects = first
    tries = 1
    while not outcomes(effects):
        source = asked(effects)[0]
        if tries % 2:  # the peer holds the model no more: the next one after a backoff
            effects = node.handle(Receive(source, MergedUnavailable(DEFAULT_CONTRACT, NUMBER)))
            (timer,) = fetch_timers(effects)
            assert timer.delay_s == FETCH_BACKOFF_S * 2 ** (tries - 1)
        else:  # the peer sends nothing: passed over when its stall timer fires
            (timer,) = fetch_timers(effects)
            assert timer.delay_s == FETCH_STALL_S
        node.now += timer.delay_s
        effects = node.handle(TimerFired(timer.tag))
        tries += 1
        assert tries <= FETCH_TRIES + 1, "the fetch did not end"
    (failed,) = outcomes(effects)
    assert isinstance(failed, RoundFailed)
    assert f"in {FETCH_TRIES} tries" in failed.reason
    assert node.core.rounds[(DEFAULT_CONTRACT, NUMBER)].finished
    assert asked(node.block()) == []  # and it stays over


def test_a_fetch_passes_over_bad_bytes_and_delivers_the_ledgers_model() -> None:
    node = PausedNode()
    assert asked(node.block()) == [PEER_A]
    wrong = bytes(len(node.merged))
    effects = node.handle(Receive(PEER_A, MergedPiece(DEFAULT_CONTRACT, NUMBER, -1, 0, wrong)))
    assert asked(effects) == [PEER_B]  # the next peer at once
    # a stale piece of the first try changes nothing
    stale = MergedPiece(DEFAULT_CONTRACT, NUMBER, -1, 0, node.merged)
    assert node.handle(Receive(PEER_A, stale)) == []
    half = len(node.merged) // 2
    assert (
        outcomes(
            node.handle(
                Receive(PEER_B, MergedPiece(DEFAULT_CONTRACT, NUMBER, -1, 0, node.merged[:half]))
            )
        )
        == []
    )
    last = MergedPiece(DEFAULT_CONTRACT, NUMBER, -1, half, node.merged[half:])
    (done,) = outcomes(node.handle(Receive(PEER_B, last)))
    assert isinstance(done, RoundDone)
    assert done.root == node.root
    assert bytes(done.flat) == node.merged
