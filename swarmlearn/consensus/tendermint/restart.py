"""Restart (sans-IO, for :class:`~swarmlearn.consensus.tendermint.core.ConsensusCore`): the state
rebuilt from what was persisted, with nothing sent while it is.

Committed blocks are re-executed from the ``blocks`` stream; then the WAL of the unfinished
height (the records after its last end-of-height marker) is replayed with sends suppressed,
the node's own signed messages first, so that the double-sign guard holds them before the
machine runs: replay re-uses what was signed and never signs a conflicting message. What it
signs anew (the node stopped before persisting it: never sent) is persisted once the replay
is over; then the node re-broadcasts what it signed at this height and re-arms the timeout
it was waiting for. A proposal it had not signed at all (held: a proof block waiting for a
transaction, a batch) is not made during the replay but after it, with its effects: a lone
validator decides as it proposes, and a decision made in the replay would not be persisted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from swarmlearn.consensus.tendermint.types import BlockResponse, Proposal, Step, Vote
from swarmlearn.consensus.tendermint.wal import (
    Heard,
    HeightDone,
    Signed,
    Started,
    TimedOut,
    TimeoutTag,
    WalRecord,
)
from swarmlearn.sansio import Broadcast, Effect, Persist, SetTimer

if TYPE_CHECKING:
    from swarmlearn.consensus.tendermint.core import ConsensusCore

WAL = "wal"  # the write-ahead log stream (consensus/tendermint/store.py)
BLOCKS = "blocks"  # the committed blocks stream
STATUS_TIMER = "status"


def restore(core: ConsensusCore, persisted: Any) -> list[Effect]:
    core.replaying = True
    for block, commit in persisted.get(BLOCKS, ()):
        if block.header.height == core.height:
            core.commit_block(block, commit)
    stored = core.height  # the first height the blocks stream does not hold
    wal: list[WalRecord] = list(persisted.get(WAL, ()))
    done = [
        i
        for i, record in enumerate(wal)
        if isinstance(record, HeightDone) and record.height >= core.height - 1
    ]
    tail = wal[done[-1] + 1 :] if done else [r for r in wal if not isinstance(r, HeightDone)]
    for record in tail:  # the guard first: replay re-uses what was signed, never re-signs
        if isinstance(record, Signed) and record.message.height == core.height:
            core.signed[core.signed_key(record.message)] = record.message
    from_wal = set(core.signed)
    for record in tail:
        replay(core, record)
    core.replaying = False
    # A height the replay decided (its votes, or a caught-up block, were in the WAL while the
    # block itself never reached the blocks stream: a crash, a full disk, a torn tail) is
    # stored now, before anything else: the stream must go on without a gap.
    effects: list[Effect] = []
    for height in range(stored, core.height):
        effects += [Persist(BLOCKS, core.blocks[height]), Persist(WAL, HeightDone(height))]
    effects.append(SetTimer(STATUS_TIMER, core.config.status_interval_s))
    if core.started:
        # What the replay signed anew (the node stopped before it could persist it, so it was
        # never sent) goes to the WAL before anything is sent, as any own message does.
        fresh = [message for key, message in core.signed.items() if key not in from_wal]
        effects += [Persist(WAL, Signed(message)) for message in fresh]
        effects += [Broadcast(message, core.peers) for message in core.signed.values()]
        effects += restore_timers(core)
        effects += core.release_held()  # a proposal it had not signed: signed and sent now
    return effects


def restore_timers(core: ConsensusCore) -> list[Effect]:
    """The timeout the machine was waiting for when the node stopped."""
    state = core.machine.state
    steps = [Step.PROPOSE] if state.step == Step.PROPOSE else []
    if state.step == Step.PREVOTE and ("timeout-prevote", state.round) in state.fired:
        steps.append(Step.PREVOTE)
    if ("timeout-precommit", state.round) in state.fired:
        steps.append(Step.PRECOMMIT)
    return [
        SetTimer(TimeoutTag(core.height, state.round, step), core.timeout_s(step, state.round))
        for step in steps
    ]


def replay(core: ConsensusCore, record: WalRecord) -> None:
    match record:
        case Started(height) if height == core.height and not core.started:
            core.run_machine(core.machine.start(0))
        case Heard(BlockResponse() as response):
            if response.block.header.height == core.height:
                core.commit_block(response.block, response.commit)
        case Heard(Proposal() | Vote() as message) if message.height == core.height:
            if not core.started:
                core.run_machine(core.machine.start(0))
            if isinstance(message, Proposal):
                core.take_proposal(message, persist=False)
            else:
                core.take_vote(message, persist=False)
        case TimedOut(height, round_, step) if height == core.height:
            core.run_machine(core.machine.on_timeout(step, round_))
