"""A swarm node's cores composed into one (sans-IO): the ledger, and the SL rounds beside it.

The composite routes inputs: round messages, contributions and round timers to the
:class:`SLRoundCore`, everything else to the ledger: on a real node the
:class:`~swarmlearn.consensus.tendermint.over_gossip.LedgerOverGossip` (the consensus core over
the host's peer table and gossip: the node's one network), in the round simulator a bare
:class:`ConsensusCore` whose broadcasts the simulator carries to every member. It closes the
loop between them inside one ``handle`` call: a transaction the SL core wants on the ledger
(:class:`SubmitSigned`) is handed to the consensus core as a local request, and every committed
block (``Deliver(Committed)``) tells the SL core to look at the rounds again, and every
transaction the mempool refuses (``Deliver(TxRefused)``) is shown to it (a trainer's check-in:
the trainer hears why at once). At ``Start`` the node asks to join the registry (a signed
``Join`` with its certificate) unless the ledger already has it.
"""

from __future__ import annotations

from collections.abc import Callable

from swarmlearn.consensus.ledger.app import SwarmApp
from swarmlearn.consensus.ledger.txs import Join
from swarmlearn.consensus.tendermint.core import ConsensusCore
from swarmlearn.consensus.tendermint.events import Committed, SubmitTx, TxRefused
from swarmlearn.consensus.tendermint.over_gossip import LedgerOverGossip
from swarmlearn.p2p.wire import Message
from swarmlearn.roles.sl.core import (
    Contribute,
    FetchMerged,
    Hashed,
    LedgerChanged,
    MergedPiece,
    MergePartials,
    Refilled,
    RoundChunk,
    RoundManifest,
    SLEffect,
    SLRoundCore,
    SubmitSigned,
)
from swarmlearn.roles.sl.messages import (
    FetchLatest,
    MergedUnavailable,
    ReportPerf,
    ResendRound,
    ResendUnheld,
    SessionClosed,
)
from swarmlearn.roles.sl.timers import SLTimer
from swarmlearn.sansio import Deliver, Effect, Input, Receive, Request, Start, TimerFired

ROUND_MESSAGES = (
    RoundManifest,
    RoundChunk,
    MergedPiece,
    MergePartials,
    FetchMerged,
    MergedUnavailable,
    ResendRound,
    ResendUnheld,
)
#: Local requests for the SL core (from the node: a trainer's, or a round lane's).
SL_REQUESTS = (Contribute, Hashed, Refilled, FetchLatest, ReportPerf, SessionClosed)


class SwarmNodeCore:
    def __init__(
        self,
        consensus: ConsensusCore | LedgerOverGossip,
        app: SwarmApp,
        sign: Callable[[Message], bytes],
        certificate: bytes,
        address: str = "",
        *,
        join_at_start: bool = True,
    ) -> None:
        self.consensus = consensus
        self.app = app
        self.sign = sign
        self.certificate = certificate
        self.address = address
        self.join_at_start = join_at_start
        self.me = consensus.me
        self.sl = SLRoundCore(self.me, app, sign)

    def handle(self, event: Input, now: float) -> list[Effect]:
        effects: list[SLEffect]
        match event:
            case Receive(_, message) if isinstance(message, ROUND_MESSAGES):
                effects = self.sl.handle(event, now)
            case Request(
                Contribute()
                | Hashed()
                | Refilled()
                | FetchLatest()
                | ReportPerf()
                | SessionClosed()
            ):
                effects = self.sl.handle(event, now)
            case TimerFired(SLTimer()):
                effects = self.sl.handle(event, now)
            case Start():
                effects = list(self.consensus.handle(event, now))
                if self.join_at_start and self.me not in self.app.state.members:
                    effects.append(SubmitSigned(self.sign(Join(self.address, self.certificate))))
            case _:
                effects = list(self.consensus.handle(event, now))
        return self._settle(effects, now)

    def _settle(self, effects: list[SLEffect], now: float) -> list[Effect]:
        """Carry the SL core's ledger transactions to the consensus core, and commits back."""
        out: list[Effect] = []
        pending: list[SLEffect] = list(effects)
        while pending:
            effect = pending.pop(0)
            if isinstance(effect, SubmitSigned):
                pending[:0] = self.consensus.handle(Request(SubmitTx(effect.tx)), now)
                continue
            out.append(effect)
            if isinstance(effect, Deliver) and isinstance(effect.value, Committed):
                pending[:0] = self.sl.handle(Request(LedgerChanged()), now)
            elif isinstance(effect, Deliver) and isinstance(effect.value, TxRefused):
                pending[:0] = self.sl.handle(Request(effect.value), now)  # its check-in?
        return out
