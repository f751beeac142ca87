"""The consensus node core (sans-IO): Tendermint, the mempool, the application, the WAL rules.

Theory of operation
-------------------
:class:`ConsensusCore` is what a validator runs; drivers feed it inputs and carry out its
effects (see :mod:`swarmlearn.sansio`). It wraps the pure :class:`Machine` of the current
height with everything around it:

- **checking**: a proposal counts only if its signature is the round proposer's and its
  block is valid (height, previous hash, app hash, validator-set hash, tx root, each tx's
  ``check_tx``); votes go through the :class:`VoteKeeper` (equivocation becomes evidence);
- **signing**: :class:`CastVote` and :class:`Propose` outputs are signed here, after the
  double-sign guard: a (height, round, kind) already signed for another value is refused;
- **WAL rules**: every input is persisted (``Persist("wal", ...)``) before the effects of
  processing it, and every message this node signs is persisted before it is sent. On
  restart, committed blocks are re-executed from the ``blocks`` stream and the WAL of the
  unfinished height is replayed with sends suppressed: the machine ends where it was, and
  the guard (rebuilt from the WAL) keeps it from ever signing a conflicting vote;
- **heights**: a decision persists the block and its commit, executes it, evicts its txs
  from the mempool and starts the next height. With ``create_empty_blocks`` off, a height
  starts only when there is a transaction to order, a peer is already working on it, or the
  last block changed the state (one empty "proof" block then records its app hash);
- **gossip and catch-up**: transactions are flooded to peers (checked first; a received
  one is never relayed, so an honest peer never passes on a forgery: one a peer sends that
  the ``is_forgery`` hook calls forged is delivered as :class:`ForgedTx`); every
  ``status_interval_s`` a node tells one random peer its (height, round, step); a peer
  behind gets the next committed block with its commit (verified before it is applied), a
  peer at the same height gets the proposals and votes it may have missed (this also
  repairs message loss);
- **batching**: with an ``awaits`` hook (the swarm app's :mod:`batching`), a proposer holds a
  fresh proposal, at most ``batch_wait_s``, while the hook says more of a batch of
  transactions is on its way, and proposes the moment it is complete. A proof block (the
  height after a state change, started with an empty mempool) is held the same way, at most
  ``proof_wait_s``, for a transaction to carry: a client that submits its next transaction
  once the last one committed (a round's check-in, then its merged root) would otherwise
  find the proof height under way and wait for two heights instead of one.

Catch-up lives in :mod:`catchup`, restart (replay of the persisted state) in :mod:`restart`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from swarmlearn.consensus.tendermint.app import Application
from swarmlearn.consensus.tendermint.catchup import (
    answer_status,
    catch_up,
    commit_problem,
    voter_bits,
)
from swarmlearn.consensus.tendermint.crypto import Signer, Verifier
from swarmlearn.consensus.tendermint.events import (
    Committed,
    EvidenceFound,
    Genesis,
    SubmitTx,
    TxRefused,
)
from swarmlearn.consensus.tendermint.machine import (
    PROPOSALS_PER_ROUND_MAX,
    CastVote,
    Decide,
    Machine,
    Output,
    Propose,
    Received,
    ScheduleTimeout,
)
from swarmlearn.consensus.tendermint.mempool import Mempool, MempoolConfig
from swarmlearn.consensus.tendermint.restart import BLOCKS as BLOCKS
from swarmlearn.consensus.tendermint.restart import STATUS_TIMER as STATUS_TIMER
from swarmlearn.consensus.tendermint.restart import WAL as WAL
from swarmlearn.consensus.tendermint.restart import restore
from swarmlearn.consensus.tendermint.types import (
    Block,
    BlockHeader,
    BlockRequest,
    BlockResponse,
    Commit,
    CommitSig,
    Proposal,
    Status,
    Step,
    Tx,
    Validator,
    ValidatorSet,
    Vote,
    VoteType,
    tx_root,
)
from swarmlearn.consensus.tendermint.votekeeper import (
    ROUND_WINDOW,
    Added,
    ThresholdKind,
    VoteKeeper,
)
from swarmlearn.consensus.tendermint.wal import (
    Heard,
    HeightDone,
    Signed,
    Started,
    TimedOut,
    TimeoutTag,
)
from swarmlearn.p2p.wire import Message
from swarmlearn.sansio import (
    Broadcast,
    CancelTimer,
    Deliver,
    Effect,
    Input,
    Log,
    Persist,
    Receive,
    Request,
    Send,
    SetTimer,
    Start,
    TimerFired,
)

NEXT_HEIGHT_TIMER = "next-height"
BATCH_TIMER = "batch"
FUTURE_BUFFER_MAX = 10_000


@dataclass(frozen=True)
class ForgedTx:
    """Delivered when a peer sent a transaction that the ``is_forgery`` hook calls forged."""

    sender: str
    reason: str


#: Empty blocks for time in a row after failed rounds, at most (then transactions go in).
EMPTY_FOR_TIME_MAX = 4
#: The most propose timeouts the network's pace (see ConsensusCore._pace_s) counts for.
PACE_MAX = 2


@dataclass(frozen=True)
class ConsensusConfig:
    timeout_propose_s: float = 1.0
    timeout_prevote_s: float = 0.5
    timeout_precommit_s: float = 0.5
    timeout_delta_s: float = 0.25  # added per round: timeouts grow until the network delivers
    status_interval_s: float = 0.5
    block_txs_max: int = 5_000
    block_bytes_max: int = 4 * 1024 * 1024
    create_empty_blocks: bool = False
    #: The longest a proposer holds its proposal back while the ``awaits`` hook says the
    #: rest of a batch of transactions is on its way (0: never).
    batch_wait_s: float = 0.1
    #: The longest a proposer holds an empty proof block back for a transaction to carry
    #: (0: never). The wait does not count as a quiet spell (``block_time_lag_s``): the
    #: block it carries is not turned into an empty one for time.
    proof_wait_s: float = 0.3
    #: Block time is the median of the last commit's vote times, so after a quiet spell it
    #: is as old as that commit. A proposer whose last commit is older than this proposes an
    #: empty block first (unless the last two blocks were empty already): its commit, voted
    #: now, stamps the transactions' block with the validators' present time.
    block_time_lag_s: float = 0.2
    mempool: MempoolConfig = field(default_factory=MempoolConfig)

    def timeout_s(self, step: Step, round_: int) -> float:
        base = {
            Step.PROPOSE: self.timeout_propose_s,
            Step.PREVOTE: self.timeout_prevote_s,
            Step.PRECOMMIT: self.timeout_precommit_s,
        }[step]
        return base + round_ * self.timeout_delta_s


class ConsensusCore:
    """One validator's (or follower's) ledger: feed it inputs with :meth:`handle`.

    Restart (:mod:`.restart`) and catch-up (:mod:`.catchup`) are this class's own logic kept
    in files of their own; they drive it through its named steps, the same ones ``handle``
    uses: :meth:`take_proposal` and :meth:`take_vote` (a checked message into the machine),
    :meth:`run_machine` (the machine's outputs signed, persisted, sent), :meth:`block_problem`
    (why a block is invalid at this height), :meth:`commit_block` (a decided block executed,
    the next height started), :meth:`status` and :meth:`ask_for_blocks` (catch-up's
    requests), and :meth:`signed_key` (the double-sign guard's key).
    """

    def __init__(
        self,
        genesis: Genesis,
        signer: Signer,
        verifier: Verifier,
        app: Application,
        rng: random.Random,
        peers: Sequence[str],
        config: ConsensusConfig | None = None,
        awaits: Callable[[Sequence[bytes]], bool] | None = None,
        is_forgery: Callable[[str], bool] | None = None,
    ) -> None:
        self.genesis = genesis
        self.chain_id = genesis.chain_id
        self.signer = signer
        self.me = signer.node_id
        self.verifier = verifier
        self.app = app
        self.rng = rng
        self.set_peers(peers)
        self.config = config or ConsensusConfig()
        self.mempool = Mempool(app.check_tx, self.config.mempool)
        initial = ValidatorSet(genesis.validators)
        self.validator_sets: dict[int, ValidatorSet] = {1: initial, 2: initial}
        self.blocks: dict[int, tuple[Block, Commit]] = {}
        self.height = 1
        self.last_hash = b""
        self.last_time_ms = genesis.time_ms
        self.signed: dict[tuple[int, int, str], Proposal | Vote] = {}  # the double-sign guard
        self.status_sent: dict[str, float] = {}
        self.future: list[tuple[str, Proposal | Vote]] = []
        self.replaying = False
        #: The application's word on the mempool: True while more of a batch is coming.
        self.awaits = awaits
        #: Which refusals of a peer's transaction prove it forged (the peer network polices).
        self.is_forgery = is_forgery
        #: When (this node's clock) it decided the last height itself, from votes; None
        #: after a block taken by catch-up or replay.
        self.decided_at: float | None = None
        #: When (this node's clock) the first proposal of this height reached it or was made
        #: by it, and how long the last height it decided itself took from there to its
        #: decision: the network's present pace (see _clock_block_due).
        self.proposal_at: float | None = None
        self.pace_s = 0.0
        self.held: tuple[int, int] | None = None  # the (height, round) of a held proposal
        self.waited: tuple[int, int] | None = None  # ... whose wait is over
        self._new_height()

    # ------------------------------------------------------------ height bookkeeping

    @property
    def validators(self) -> ValidatorSet:
        return self.validator_sets[self.height]

    def _new_height(self) -> None:
        self.keeper = VoteKeeper(self.chain_id, self.height, self.validators, self.verifier)
        self.machine = Machine(self.height, self.me, self.keeper)
        self.proposal_at = None

    def set_peers(self, peers: Sequence[str]) -> None:
        """The driver's current peers (the simulator's are fixed; a real node's change)."""
        self.peers = tuple(sorted(p for p in peers if p != self.me))

    @property
    def started(self) -> bool:
        return self.machine.state.round >= 0

    # ------------------------------------------------------------ the entry point

    def handle(self, event: Input, now: float) -> list[Effect]:
        self.now = now
        match event:
            case Start(persisted):
                return restore(self, persisted)
            case Request(SubmitTx(data)):
                return self._submit(data)
            case Receive(sender, message):
                return self._receive(sender, message)
            case TimerFired(TimeoutTag(height, round_, step)):
                return self._timeout(height, round_, step)
            case TimerFired(tag) if tag == STATUS_TIMER:
                return self._status_tick()
            case TimerFired(tag) if tag == NEXT_HEIGHT_TIMER:
                return self._next_height()
            case TimerFired(tag) if tag == BATCH_TIMER:
                return self._release()
        return []

    # ------------------------------------------------------------ inputs

    def _submit(self, data: bytes) -> list[Effect]:
        reason = self.mempool.add(data)
        if reason:
            return [Deliver(TxRefused(data, reason))]
        return [Broadcast(Tx(data), self.peers), *self._maybe_start(), *self._batch_grew()]

    def _receive(self, sender: str, message: Message) -> list[Effect]:
        match message:
            case Tx(data):
                if reason := self.mempool.add(data):
                    forged = self.is_forgery is not None and self.is_forgery(reason)
                    return [Deliver(ForgedTx(sender, reason))] if forged else []
                return self._maybe_start() + self._batch_grew()
            case Proposal() | Vote():
                return self._consensus_message(sender, message)
            case Status():
                return answer_status(self, sender, message)
            case BlockRequest(height):
                found = self.blocks.get(height)
                return [Send(sender, BlockResponse(*found))] if found else []
            case BlockResponse(block, commit):
                return catch_up(self, sender, block, commit)
        return []

    def _consensus_message(self, sender: str, message: Proposal | Vote) -> list[Effect]:
        if message.height > self.height:
            if message.height == self.height + 1 and len(self.future) < FUTURE_BUFFER_MAX:
                self.future.append((sender, message))
            return self.ask_for_blocks(sender)
        if message.height < self.height:
            return []
        effects: list[Effect] = []
        if not self.started:
            effects += self._start_height()
        if isinstance(message, Proposal):
            return effects + self.take_proposal(message, persist=True)
        return effects + self.take_vote(message, persist=True)

    def take_proposal(self, proposal: Proposal, *, persist: bool) -> list[Effect]:
        if proposal.round > max(self.machine.state.round, 0) + ROUND_WINDOW:
            return []
        proposer = self.validators.proposer(self.height, proposal.round)
        if proposal.proposer != proposer:
            return [Log(f"proposal for round {proposal.round} not from {proposer}", "warning")]
        kept = self.machine.proposals.get(proposal.round, [])
        if any(k.proposal.signature == proposal.signature for k in kept):
            return []  # a duplicate: no crypto
        if len(kept) >= PROPOSALS_PER_ROUND_MAX:
            return []  # an equivocating proposer's extra proposals: bounded
        public_key = self.validators.by_node[proposer].public_key
        if not self.verifier.verify(
            public_key, proposal.signature, proposal.sign_bytes(self.chain_id)
        ):
            return [Log(f"proposal from {proposer}: bad signature", "warning")]
        if self.machine.holds(proposal.round, proposal.block.hash):
            return []
        effects: list[Effect] = [Persist(WAL, Heard(proposal))] if persist else []
        self._proposal_seen()
        if kept:  # a second block for one round: evidence, and kept (lines 36 and 49 apply)
            evidence = EvidenceFound(proposer, self.height, proposal.round, "proposal")
            effects += [Deliver(evidence), Log(f"{proposer} proposed two blocks", "warning")]
        valid = proposal.valid_round < proposal.round and not self.block_problem(proposal.block)
        outputs = self.machine.on_proposal(Received(proposal, valid))
        return effects + self.run_machine(outputs)

    def take_vote(self, vote: Vote, *, persist: bool) -> list[Effect]:
        result = self.keeper.add(vote, max(self.machine.state.round, 0))
        if result.added not in (Added.COUNTED, Added.EQUIVOCATION):
            return []
        effects: list[Effect] = [Persist(WAL, Heard(vote))] if persist else []
        if result.added is Added.EQUIVOCATION:
            evidence = EvidenceFound(vote.validator, vote.height, vote.round, vote.kind.name)
            effects += [Deliver(evidence), Log(result.reason, "warning")]
        for threshold in result.thresholds:
            if threshold.kind is ThresholdKind.QUORUM_VALUE and threshold.value is not None:
                effects += self._fetch_proposal(threshold.round, vote.kind, threshold.value)
        return effects + self.run_machine(self.machine.on_vote())

    def _fetch_proposal(self, round_: int, kind: VoteType, value: bytes) -> list[Effect]:
        """A quorum voted for a block this node does not hold, and it will not come on its
        own (the round's proposer sent this node another one: it equivocated), or a decision
        waits on it (2f+1 precommits): ask its voters, whose status answer carries every
        proposal of the round. A proposal merely slower than its votes is not asked for."""
        if self.replaying or self.machine.holds(round_, value):
            return []
        if kind is not VoteType.PRECOMMIT and not self.machine.proposals.get(round_):
            return []
        voters = {v.validator for v in self.keeper.votes(round_) if v.value == value}
        status = Status(self.height, round_, Step.PROPOSE)
        return [Send(peer, status) for peer in sorted(voters) if peer in self.peers]

    def _timeout(self, height: int, round_: int, step: Step) -> list[Effect]:
        if height != self.height:
            return []
        effects: list[Effect] = [Persist(WAL, TimedOut(height, round_, step))]
        return effects + self.run_machine(self.machine.on_timeout(step, round_))

    # ------------------------------------------------------------ starting a height

    def _maybe_start(self) -> list[Effect]:
        if self.started or self.replaying:
            return []
        if len(self.mempool) or self.config.create_empty_blocks or self._needs_proof_block():
            return self._start_height()
        return []

    def _needs_proof_block(self) -> bool:
        """After a block that changed the state, one more block (even empty) puts the new app
        hash in a header, and lets validator changes take effect (CometBFT does the same)."""
        last = self.blocks.get(self.height - 1)
        return last is not None and last[0].header.app_hash != self.app.app_hash()

    def _start_height(self) -> list[Effect]:
        effects: list[Effect] = [Persist(WAL, Started(self.height))]
        effects += self.run_machine(self.machine.start(0))
        buffered, self.future = self.future, []
        for sender, message in buffered:
            effects += self._consensus_message(sender, message)
        return effects

    # ------------------------------------------------------------ machine outputs

    def run_machine(self, outputs: list[Output]) -> list[Effect]:
        effects: list[Effect] = []
        pending = list(outputs)
        while pending:
            output = pending.pop(0)
            match output:
                case Propose(round_, block, valid_round):
                    hold_s = self._hold_s(round_) if block is None else 0.0
                    if hold_s > 0:
                        self.held = (self.height, round_)
                        effects.append(SetTimer(BATCH_TIMER, hold_s))
                        continue
                    effects += self._propose(round_, block, valid_round, pending)
                case CastVote(kind, round_, value):
                    effects += self._cast(kind, round_, value, pending)
                case ScheduleTimeout(step, round_):
                    tag = TimeoutTag(self.height, round_, step)
                    effects.append(SetTimer(tag, self.timeout_s(step, round_)))
                case Decide(round_, block):
                    effects += self._decide(round_, block)
                    return effects  # the height is over; the next one has its own machine
        return effects

    def _propose(
        self, round_: int, block: Block | None, valid_round: int, pending: list[Output]
    ) -> list[Effect]:
        if self.me not in self.validators:
            return []
        key = (self.height, round_, "proposal")
        proposal = self.signed.get(key)
        if not isinstance(proposal, Proposal):
            block = block if block is not None else self._build_block()
            unsigned = Proposal(self.height, round_, valid_round, block, self.me, b"")
            signature = self.signer.sign(unsigned.sign_bytes(self.chain_id))
            proposal = Proposal(self.height, round_, valid_round, block, self.me, signature)
            self.signed[key] = proposal
        self._proposal_seen()
        pending.extend(self.machine.on_proposal(Received(proposal, True)))
        return self._publish(proposal)

    # ------------------------------------------------------------ batching a proposal

    def _hold_s(self, round_: int) -> float:
        """How long to hold a fresh proposal back (0: propose now): while the application
        expects the rest of a batch, or while an empty proof block waits for a transaction."""
        if (
            self.waited == (self.height, round_)
            or self.me not in self.validators
            or (self.height, round_, "proposal") in self.signed
        ):
            return 0.0
        if self.replaying:  # not signed before the stop: made once the replay is over (its
            return self.config.timeout_propose_s  # effects are kept then), see release_held
        if self._awaiting_batch():
            return self.config.batch_wait_s
        if round_ == 0 and not len(self.mempool) and self._needs_proof_block():
            return self.config.proof_wait_s
        return 0.0

    def _awaiting_batch(self) -> bool:
        return (
            self.awaits is not None and self.config.batch_wait_s > 0 and self.awaits(self._reap())
        )

    def _batch_grew(self) -> list[Effect]:
        """A transaction arrived: propose now, unless the batch being waited for is still
        incomplete (a held proof block takes the first transaction)."""
        if self.held is None or self._awaiting_batch():
            return []
        return [CancelTimer(BATCH_TIMER), *self._release()]

    def release_held(self) -> list[Effect]:
        """Make a held proposal now (restart: one the replay held rather than sign unseen; a
        lone validator would otherwise decide a block whose persisting the replay drops)."""
        if self.held is None:
            return []
        return [CancelTimer(BATCH_TIMER), *self._release()]

    def _release(self) -> list[Effect]:
        """Make the held proposal (the batch is complete, or the wait is over)."""
        held, self.held = self.held, None
        state = self.machine.state
        if held != (self.height, state.round) or state.step != Step.PROPOSE:
            return []  # the height or round moved on without it
        self.waited = held
        return self.run_machine([Propose(held[1], None, -1)])

    def _reap(self) -> list[bytes]:
        return self.mempool.reap(self.config.block_txs_max, self.config.block_bytes_max)

    def _cast(
        self, kind: VoteType, round_: int, value: bytes | None, pending: list[Output]
    ) -> list[Effect]:
        if self.me not in self.validators:
            return []  # a node still catching up, or not (yet) a validator, only follows
        key = (self.height, round_, kind.name)
        vote = self.signed.get(key)
        if isinstance(vote, Vote) and vote.value != value:
            # The double-sign guard: never sign a second, different vote.
            return [Log(f"refused to sign {kind.name} {value!r} after {vote.value!r}", "error")]
        if not isinstance(vote, Vote):
            time_ms = self._vote_time_ms(round_, value)
            unsigned = Vote(kind, self.height, round_, value, self.me, b"", time_ms)
            signature = self.signer.sign(unsigned.sign_bytes(self.chain_id))
            vote = Vote(kind, self.height, round_, value, self.me, signature, time_ms)
            self.signed[key] = vote
        if self.keeper.add(vote, round_).added is Added.COUNTED:
            pending.extend(self.machine.on_vote())
        return self._publish(vote)

    def _vote_time_ms(self, round_: int, value: bytes | None) -> int:
        """This node's clock, clamped to after the time of the block voted for (so the median
        of a commit, the next block's time, is later than the block it commits)."""
        floor_ms = self.last_time_ms + 1
        for received in self.machine.proposals.get(round_, []):
            if received.proposal.block.hash == value:
                floor_ms = max(floor_ms, received.proposal.block.header.time_ms + 1)
        return max(int(self.now * 1000), floor_ms)

    def _publish(self, message: Proposal | Vote) -> list[Effect]:
        """Own signed messages: persisted (fsynced) before they are sent."""
        if self.replaying:
            return []
        return [Persist(WAL, Signed(message)), Broadcast(message, self.peers)]

    def _build_block(self) -> Block:
        last_commit = self.blocks[self.height - 1][1] if self.height > 1 else None
        time_ms = self._block_time_ms(last_commit)
        txs = () if self._clock_block_due(time_ms) else tuple(self._reap())
        header = BlockHeader(
            chain_id=self.chain_id,
            height=self.height,
            time_ms=time_ms,
            proposer=self.me,
            previous_hash=self.last_hash,
            tx_root=tx_root(txs),
            app_hash=self.app.app_hash(),
            validators_hash=self.validators.hash,
            last_commit_hash=last_commit.hash if last_commit is not None else b"",
        )
        return Block(header, txs, last_commit)

    def _clock_block_due(self, time_ms: int) -> bool:
        """Propose an empty block to bring block time on: the time this block would get is
        older than ``block_time_lag_s`` by this node's clock, and either a round failed (its
        timeouts made the time old) or one of the last two blocks held transactions. In
        round 0 then, at most two empty blocks in a row come of it, whatever the network's
        delay or this node's clock: the commit of the first is as fresh as it can be. After a
        failed round, unless the last ``EMPTY_FOR_TIME_MAX`` blocks were empty: on validators
        so busy that most heights need a second round, an empty block after every failed
        round starved the mempool for good (32 daemons on 2 cores: six empty heights in a row
        while a transaction waited).

        Not in round 0 right after this node decided the last height itself (within
        ``block_time_lag_s``): then the time is old only by the network's delay (the median
        precommit to this node's decision), and an empty block's commit would be just as
        old. Only a quiet spell, a failed round or a block taken by catch-up is made up for.

        A spell is quiet only against the network's pace: on validators so loaded that a
        height takes longer than ``block_time_lag_s`` from its proposal to its decision
        (``pace_s``, the last height this node decided), an empty block's commit would stamp
        the next block just as old as the wait does, and cost a whole height (32 daemons on 2
        cores during a round: heartbeats waited 2.4 s behind an empty block). There the lag
        allowed is that pace."""
        lag_s = max(self.config.block_time_lag_s, self._pace_s())
        if int(self.now * 1000) - time_ms <= lag_s * 1000:
            return False
        if self.machine.state.round > 0:  # not after EMPTY_FOR_TIME_MAX: no starvation
            return not self._last_blocks_empty(EMPTY_FOR_TIME_MAX)
        held_s = self._held_s()
        if self.decided_at is not None and self.now - self.decided_at <= lag_s + held_s:
            return False  # busy, not quiet: the commit is as fresh as the network makes it
        for height in (self.height - 1, self.height - 2):
            found = self.blocks.get(height)
            if height < 1 or (found is not None and found[0].txs):
                return True  # (before block 1, the genesis time: as old as it gets)
        return False

    def _proposal_seen(self) -> None:
        """A proposal of this height reached this node or was made by it: the pace's start."""
        if self.proposal_at is None:
            self.proposal_at = self.now

    def _pace_s(self) -> float:
        """The last height's time from proposal to decision at this node, at most
        ``PACE_MAX`` propose timeouts (one stalled height does not stretch the next ones)."""
        return min(self.pace_s, PACE_MAX * self.config.timeout_propose_s)

    def timeout_s(self, step: Step, round_: int) -> float:
        """A step's timeout; the proposal's is longer by the network's present pace. On
        validators so loaded that a height takes a second or two, a proposal that took as
        long as the last one timed round 0 out: a failed round, an empty block for time,
        and a second height for the transactions waiting (32 daemons on 2 cores). On an idle
        network the pace is a few link delays and the timeout what it was."""
        extra_s = self._pace_s() if step == Step.PROPOSE else 0.0
        return self.config.timeout_s(step, round_) + extra_s

    def _held_s(self) -> float:
        """How long this proposal may have been held on purpose (not a quiet spell)."""
        if self.waited != (self.height, self.machine.state.round):
            return 0.0
        return max(self.config.proof_wait_s, self.config.batch_wait_s)

    def _last_blocks_empty(self, count: int) -> bool:
        """The last ``count`` blocks are all here and all empty."""
        found = [self.blocks.get(self.height - back) for back in range(1, count + 1)]
        return all(block is not None and not block[0].txs for block in found)

    def _block_time_ms(self, last_commit: Commit | None) -> int:
        """BFT time: the genesis time at height 1, else the weighted median of the times in
        the previous height's commit (with that height's validators)."""
        if last_commit is None:
            return self.genesis.time_ms
        return last_commit.median_time_ms(self.validator_sets[self.height - 1])

    def _time_problem(self, block: Block) -> str:
        """The block's time is the one its last commit gives, and that commit is valid."""
        header, last_commit = block.header, block.last_commit
        if (last_commit is None) != (self.height == 1):
            return "last commit missing" if last_commit is None else "last commit at height 1"
        if last_commit is not None:
            if header.last_commit_hash != last_commit.hash:
                return "wrong last commit hash"
            previous = self.blocks.get(self.height - 1)
            if previous is None or last_commit != previous[1]:  # ours is verified already
                validators = self.validator_sets[self.height - 1]
                if last_commit.height != self.height - 1:
                    return "last commit for another height"
                if problem := commit_problem(self, validators, self.last_hash, last_commit):
                    return f"last commit: {problem}"
        elif header.last_commit_hash:
            return "wrong last commit hash"
        if header.time_ms != self._block_time_ms(last_commit):
            return "time is not the median of the last commit"
        if self.height > 1 and header.time_ms <= self.last_time_ms:
            return "time does not increase"
        return ""

    def block_problem(self, block: Block) -> str:
        header = block.header
        expected = (
            ("chain id", header.chain_id, self.chain_id),
            ("height", header.height, self.height),
            ("previous hash", header.previous_hash, self.last_hash),
            ("app hash", header.app_hash, self.app.app_hash()),
            ("validators hash", header.validators_hash, self.validators.hash),
            ("tx root", header.tx_root, tx_root(block.txs)),
        )
        for name, got, want in expected:
            if got != want:
                return f"wrong {name}"
        if header.proposer not in self.validators:
            return "proposer is not a validator"
        if problem := self._time_problem(block):
            return problem
        if len(block.txs) > self.config.block_txs_max:
            return "too many transactions"
        for tx in block.txs:
            reason = self.app.check_tx(tx)
            if reason:
                return f"invalid transaction: {reason}"
        return ""

    # ------------------------------------------------------------ deciding

    def _decide(self, round_: int, block: Block) -> list[Effect]:
        votes = self.keeper.votes_for(round_, VoteType.PRECOMMIT, block.hash)
        commit = Commit(
            self.height,
            round_,
            block.hash,
            tuple(CommitSig(v.validator, v.signature, v.time_ms) for v in votes),
        )
        if not self.replaying and self.proposal_at is not None:
            self.pace_s = self.now - self.proposal_at
        effects = self.commit_block(block, commit)
        self.decided_at = None if self.replaying else self.now
        return effects

    def commit_block(self, block: Block, commit: Commit) -> list[Effect]:
        height = self.height
        effects: list[Effect] = [] if self.replaying else [Persist(BLOCKS, (block, commit))]
        executed = self.app.execute_block(block)
        seen = getattr(self.app, "votes_seen", None)  # liveness, for apps that show it
        if seen is not None:
            seen(height, block.header.time_ms, [s.validator for s in commit.signatures])
        self.blocks[height] = (block, commit)
        self.decided_at = None
        self.mempool.remove_committed(block.txs)
        self._apply_validator_updates(height, executed.validator_updates)
        self.last_hash = block.hash
        self.last_time_ms = block.header.time_ms
        self.height = height + 1
        self.signed = {k: v for k, v in self.signed.items() if k[0] > height}
        self._new_height()
        effects.append(
            Deliver(
                Committed(
                    height,
                    block.hash,
                    commit.round,
                    block.txs,
                    executed.app_hash,
                    block.header.time_ms,
                )
            )
        )
        if self.replaying:
            return effects
        effects.append(Persist(WAL, HeightDone(height)))
        # The next height starts from a fresh input, not from inside this one: a node that
        # commits alone would otherwise recurse once per block.
        effects.append(SetTimer(NEXT_HEIGHT_TIMER, 0.0))
        return effects

    def _next_height(self) -> list[Effect]:
        effects = self._maybe_start()
        if not self.started and self.future:
            effects += self._start_height()
        return effects

    def _apply_validator_updates(self, height: int, updates: Sequence[Validator]) -> None:
        following = self.validator_sets[height + 1]
        self.validator_sets.pop(height - 1, None)
        if not updates:
            self.validator_sets[height + 2] = following
            return
        members = {v.node: v for v in following.validators}
        for update in updates:
            if update.power == 0:
                members.pop(update.node, None)
            else:
                members[update.node] = update
        self.validator_sets[height + 2] = ValidatorSet(members.values())

    # ------------------------------------------------------------ gossip and catch-up

    def status(self) -> Status:
        round_ = max(self.machine.state.round, 0)
        votes = self.keeper.votes(round_)

        def voters(kind: VoteType) -> bytes:
            return voter_bits(self.validators, (v.validator for v in votes if v.kind == kind))

        return Status(
            self.height,
            round_,
            self.machine.state.step,
            bool(self.machine.proposals.get(round_)),
            voters(VoteType.PREVOTE),
            voters(VoteType.PRECOMMIT),
        )

    def ask_for_blocks(self, peer: str) -> list[Effect]:
        """We are behind ``peer``: tell it where we are (at most once per status interval)."""
        last = self.status_sent.get(peer)
        if last is not None and self.now - last < self.config.status_interval_s:
            return []
        self.status_sent[peer] = self.now
        return [Send(peer, self.status())]

    def _status_tick(self) -> list[Effect]:
        effects: list[Effect] = [SetTimer(STATUS_TIMER, self.config.status_interval_s)]
        if self.peers:
            effects.append(Send(self.rng.choice(self.peers), self.status()))
        return effects

    # ------------------------------------------------------------ restart

    @staticmethod
    def signed_key(message: Proposal | Vote) -> tuple[int, int, str]:
        name = "proposal" if isinstance(message, Proposal) else message.kind.name
        return (message.height, message.round, name)
