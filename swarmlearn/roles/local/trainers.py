"""The node's trainers: the glue between its local endpoint (:mod:`swarmlearn.roles.local.endpoint`)
and its SL round core (:mod:`swarmlearn.roles.sl.core`).

A trainer's :class:`LocalContribute` becomes the core's :class:`Contribute` (submitted to the
node's driver); what the core delivers for a contract (progress, the outcome, a request to
refill the handover file) goes to the trainer that contributed to it, as local messages; the
trainer's :class:`LocalRefilled` (with the hashes the endpoint took of its file) becomes the
core's :class:`Refilled`. A trainer's :class:`LocalLatest` (it joins late) becomes the core's
:class:`FetchLatest`; its progress and answer go to every trainer that asked for the contract.

Trainers are *sessions* (one per connection, :mod:`swarmlearn.roles.local.endpoint`): what the core
delivers carries the session of the contribution it is about, and goes to that session only
(a trainer restarted mid-round never hears the round its earlier run checked in to). A
session that closes is forgotten here and told to the core (:class:`SessionClosed`).
"""

from __future__ import annotations

from collections.abc import Callable

from swarmlearn.p2p.wire import Message
from swarmlearn.roles.local.messages import (
    LocalContribute,
    LocalLatest,
    LocalLatestReply,
    LocalPerf,
    LocalProgress,
    LocalRefill,
    LocalRefilled,
    LocalRoundDone,
    LocalRoundFailed,
)
from swarmlearn.roles.sl.core import (
    Contribute,
    NeedRefill,
    Progress,
    Refilled,
    RoundDone,
    RoundFailed,
    SessionClosed,
)
from swarmlearn.roles.sl.messages import (
    FetchLatest,
    LatestFailed,
    LatestModel,
    LatestProgress,
    ReportPerf,
)
from swarmlearn.sansio import Input, Request

#: What the SL core delivers to a trainer.
ToTrainer = Progress | RoundDone | RoundFailed | NeedRefill
#: What the SL core delivers to the trainers that asked for a contract's latest model.
ToJoiner = LatestProgress | LatestModel | LatestFailed


Reply = Callable[[Message], None]


class Trainers:
    """The trainer sessions on this host."""

    def __init__(self, submit: Callable[[Input], bool]) -> None:
        self.submit = submit  # the node driver's: an input for the core
        self.replies: dict[int, Reply] = {}  # by session
        self.joiners: dict[str, list[tuple[int, Reply]]] = {}  # waiting for a model

    def on_contribute(
        self,
        message: LocalContribute,
        reply: Reply,
        chunk_hashes: tuple[bytes, ...],
        session: int = 0,
    ) -> None:
        """A trainer on this host hands over its weights for the contract's next round."""
        self.replies[session] = reply
        contribution = Contribute(
            message.contract,
            message.data,  # a view of the received frame (or the handover file): no copy
            message.layout(),
            message.weight,
            message.min_peers,
            message.merge_method,
            message.perf,
            message.final,
            chunk_hashes,
            message.sync_timeout_s or None,
            message.refill,
            session,
        )
        if not self.submit(Request(contribution)):
            reply(LocalRoundFailed(0, "the node is overloaded; try again"))

    def on_refilled(
        self,
        contract: str,
        message: LocalRefilled,
        chunk_hashes: tuple[bytes, ...],
        session: int = 0,
    ) -> None:
        """The trainer wrote its weights into its handover file again (or could not)."""
        hashes = chunk_hashes or None
        refilled = Refilled(contract, message.round, message.ok, message.reason, hashes, session)
        self.submit(Request(refilled))

    def on_perf(self, message: LocalPerf) -> None:
        """PERFDATA measured after a round (the final one's, on the final merged model)."""
        m = message
        self.submit(
            Request(
                ReportPerf(m.contract, m.round, m.loss, m.metric, m.epochs_done, m.epochs_total)
            )
        )

    def on_latest(self, message: LocalLatest, reply: Reply, session: int = 0) -> None:
        """A trainer on this host asks for the contract's latest merged model."""
        self.joiners.setdefault(message.contract, []).append((session, reply))
        asked = FetchLatest(message.contract, message.layout(), message.wait_s)
        if not self.submit(Request(asked)):
            self.deliver(LatestFailed(message.contract, "the node is overloaded; try again"))

    def deliver(self, value: ToTrainer | ToJoiner) -> None:
        if isinstance(value, LatestProgress | LatestModel | LatestFailed):
            self._to_joiners(value)
            return
        reply = self.replies.get(value.session)
        if reply is None:  # the session is gone: its outcome goes to no one else
            return
        if isinstance(value, Progress):
            reply(LocalProgress(value.round, value.text))
        elif isinstance(value, RoundDone):
            reply(
                LocalRoundDone(
                    value.round, value.root, value.flat, value.training_over, value.participants
                )
            )
        elif isinstance(value, NeedRefill):
            reply(LocalRefill(value.round, value.attempt))
        else:
            reply(LocalRoundFailed(value.round, value.reason, value.overwritten, value.refused))

    def on_closed(self, session: int) -> None:
        """A trainer's connection closed: forget it, and let the core drop its claims."""
        self.replies.pop(session, None)
        for contract, waiting in list(self.joiners.items()):
            self.joiners[contract] = [(s, r) for s, r in waiting if s != session]
        self.submit(Request(SessionClosed(session)))

    def _to_joiners(self, value: ToJoiner) -> None:
        if isinstance(value, LatestProgress):
            for _, reply in self.joiners.get(value.contract, ()):
                reply(LocalProgress(0, value.text))
            return
        if isinstance(value, LatestModel):
            answer = LocalLatestReply(value.round, value.root, value.flat)
        else:
            answer = LocalLatestReply(0, b"", b"", value.reason, value.mismatch)
        for _, reply in self.joiners.pop(value.contract, ()):
            reply(answer)
