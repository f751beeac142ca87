"""Trainer sessions, without sockets: the node's glue (trainers.py) routes what the SL core
delivers to the session it is about, and the core turns a session's end and every refusal
of its check-in into the right effects (roles/sl/sessions.py, over a real swarm app)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from swarmlearn.consensus.ledger.app import DEFAULT_CONTRACT
from swarmlearn.consensus.ledger.txs import CheckIn, CheckOut, SignedTx
from swarmlearn.consensus.tendermint.events import TxRefused
from swarmlearn.merge import ModelState, flatten, layout_of
from swarmlearn.merge.manifest import Layout
from swarmlearn.p2p.wire import Message, decode_header
from swarmlearn.roles.local.endpoint import LocalEndpoint
from swarmlearn.roles.local.messages import LocalContribute, LocalRoundDone, LocalRoundFailed
from swarmlearn.roles.local.trainers import Trainers
from swarmlearn.roles.sl.core import (
    Contribute,
    LedgerChanged,
    RoundDone,
    RoundFailed,
    SessionClosed,
    SLRoundCore,
    SubmitSigned,
)
from swarmlearn.sansio import Deliver, Input, Request
from tests.test_swarm_app import Ledger, Swarm, check_in, joined, signed
from tests.test_swarm_app import swarm as swarm


def test_outcomes_go_to_their_session_and_a_closed_one_takes_its_claims(tmp_path: Path) -> None:
    inputs: list[Input] = []

    def submit(event: Input) -> bool:
        inputs.append(event)
        return True

    trainers = Trainers(submit)
    heard: dict[int, list[Message]] = {1: [], 2: []}
    layout = layout_of(ModelState({"w": np.zeros(4, np.float32)}))
    message = LocalContribute.of(
        DEFAULT_CONTRACT, layout, bytes(16), weight=1, min_peers=2, merge_method="mean"
    )
    for session in (1, 2):  # two trainers of the same contract on one node
        trainers.on_contribute(message, heard[session].append, (), session)
    assert [e.value.session for e in inputs if isinstance(e, Request)] == [1, 2]
    trainers.deliver(RoundDone(DEFAULT_CONTRACT, 4, b"root", b"", session=1))
    trainers.deliver(RoundFailed(DEFAULT_CONTRACT, 5, "why", session=2, refused=True))
    assert [type(m) for m in heard[1]] == [LocalRoundDone]
    assert heard[2] == [LocalRoundFailed(5, "why", False, True)]
    trainers.on_closed(1)
    assert inputs[-1] == Request(SessionClosed(1))
    trainers.deliver(RoundDone(DEFAULT_CONTRACT, 6, b"root", b"", session=1))  # nobody's now
    assert [len(heard[1]), len(heard[2])] == [1, 1]
    endpoint = LocalEndpoint(tmp_path / "sl.sock", trainers.on_contribute)
    first, second = endpoint.new_session(), endpoint.new_session()
    assert first < second
    assert endpoint.claim("/dev/shm/file-a", first) == ""
    assert endpoint.claim("/dev/shm/file-a", first) == ""  # its own file, again
    assert endpoint.claim("/dev/shm/file-a", second) == "another trainer session's handover file"


def core_of(swarm: Swarm, ledger: Ledger, name: str) -> SLRoundCore:
    me = str(swarm.people[name].peer_id)
    return SLRoundCore(me, ledger.app, lambda body: signed(swarm.people[name], body))


def contribution(
    session: int, wait_s: float | None = None, tensor: str = "fc.weight"
) -> tuple[Contribute, Layout]:
    state = ModelState({tensor: np.ones((10, 4), np.float32), "fc.bias": np.ones(10, np.float32)})
    layout = layout_of(state)
    flat = bytes(flatten(state, layout))
    return Contribute(DEFAULT_CONTRACT, flat, layout, 1, 3, wait_s=wait_s, session=session), layout


def submitted(effects: Sequence[object]) -> list[bytes]:
    return [e.tx for e in effects if isinstance(e, SubmitSigned)]


def body_of(tx: bytes) -> Message:
    signed_tx = decode_header(tx)
    assert isinstance(signed_tx, SignedTx)
    return signed_tx.decoded_body()


def failures(effects: Sequence[object]) -> list[RoundFailed]:
    return [e.value for e in effects if isinstance(e, Deliver) and isinstance(e.value, RoundFailed)]


def test_a_check_in_carries_session_nonce_and_wait_and_a_closed_session_checks_out(
    swarm: Swarm,
) -> None:
    ledger = joined(swarm, "a", "b", "c")
    core = core_of(swarm, ledger, "a")
    c, _ = contribution(7, wait_s=30.0)
    first = submitted(core.handle(Request(c), 100.0))
    (check,) = [body_of(tx) for tx in first if isinstance(body_of(tx), CheckIn)]
    assert isinstance(check, CheckIn)
    assert (check.session, check.nonce, check.wait_ms) == (7, 1, 30_000)
    ledger.block(*first)
    assert core.handle(Request(SessionClosed(8)), 101.0) == []  # another session: nothing
    effects = core.handle(Request(SessionClosed(7)), 101.0)
    (check_out,) = submitted(effects)
    assert body_of(check_out) == CheckOut(DEFAULT_CONTRACT, 1, 7, "its trainer went away")
    # The restarted script's weights wait until the ledger shows the old check-in out.
    queued = core.handle(Request(contribution(9)[0]), 102.0)
    assert submitted(queued) == []
    ledger.block(check_out)
    assert ledger.refusals() == []
    again = submitted(core.handle(Request(LedgerChanged()), 102.5))
    assert list(core.rounds) == [(DEFAULT_CONTRACT, 2)]  # round 1, left empty, was abandoned
    (check_again,) = [body_of(tx) for tx in again if isinstance(body_of(tx), CheckIn)]
    assert isinstance(check_again, CheckIn)
    assert (check_again.round, check_again.session, check_again.nonce) == (2, 9, 2)
    assert check_again.root == check.root  # the same weights, yet another transaction
    assert again != first


def test_every_refusal_of_a_check_in_fails_the_round_at_once_unless_it_passes(
    swarm: Swarm,
) -> None:
    ledger = joined(swarm, "a", "b", "c")
    core = core_of(swarm, ledger, "a")
    (tx,) = submitted(core.handle(Request(contribution(1, tensor="w")[0]), 1.0))
    for passing in (
        "already in the mempool",
        "mempool full",
        "a1b2c3d4 is not a member: join first",
    ):
        assert failures(core.handle(Request(TxRefused(tx, passing)), 1.1)) == []
    # The ledger refused it when it executed it (another model got there first); the node
    # resends it, and its mempool says "already committed": the ledger's reason comes out.
    ledger.block(check_in(swarm, "b", 1), tx)  # b's model fixes the contract's layout first
    (failed,) = failures(core.handle(Request(TxRefused(tx, "already committed")), 1.2))
    assert failed.refused
    assert failed.session == 1
    assert failed.reason.startswith("the ledger refuses it: tensor")
    # A refusal by the mempool's own check (here: a role the node lacks) fails it at once.
    core = core_of(swarm, ledger, "c")
    (tx,) = submitted(core.handle(Request(contribution(2)[0]), 2.0))
    (failed,) = failures(core.handle(Request(TxRefused(tx, "CheckIn needs the sl role")), 2.0))
    assert (failed.refused, failed.reason) == (
        True,
        "the ledger refuses it: CheckIn needs the sl role",
    )
