"""The node's trainers: the glue between its local endpoint (:mod:`swarmlearn.roles.local`)
and its SL round core (:mod:`swarmlearn.roles.sl_round`).

A trainer's :class:`LocalContribute` becomes the core's :class:`Contribute` (submitted to the
node's driver); what the core delivers for a contract (progress, the outcome, a request to
refill the handover file) goes to the trainer that contributed to it, as local messages; the
trainer's :class:`LocalRefilled` (with the hashes the endpoint took of its file) becomes the
core's :class:`Refilled`.
"""

from __future__ import annotations

from collections.abc import Callable

from swarmlearn.p2p.wire import Message
from swarmlearn.roles.local import (
    LocalContribute,
    LocalProgress,
    LocalRefill,
    LocalRefilled,
    LocalRoundDone,
    LocalRoundFailed,
)
from swarmlearn.roles.sl_round import (
    Contribute,
    NeedRefill,
    Progress,
    Refilled,
    RoundDone,
    RoundFailed,
)
from swarmlearn.sansio import Input, Request

#: What the SL core delivers to a trainer.
ToTrainer = Progress | RoundDone | RoundFailed | NeedRefill


class Trainers:
    """The trainers on this host, by contract (the latest to contribute to it)."""

    def __init__(self, submit: Callable[[Input], bool]) -> None:
        self.submit = submit  # the node driver's: an input for the core
        self.replies: dict[str, Callable[[Message], None]] = {}

    def on_contribute(
        self,
        message: LocalContribute,
        reply: Callable[[Message], None],
        chunk_hashes: tuple[bytes, ...],
    ) -> None:
        """A trainer on this host hands over its weights for the contract's next round."""
        self.replies[message.contract] = reply
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
        )
        self.submit(Request(contribution))

    def on_refilled(
        self, contract: str, message: LocalRefilled, chunk_hashes: tuple[bytes, ...]
    ) -> None:
        """The trainer wrote its weights into its handover file again (or could not)."""
        hashes = chunk_hashes or None
        self.submit(Request(Refilled(contract, message.round, message.ok, message.reason, hashes)))

    def deliver(self, value: ToTrainer) -> None:
        reply = self.replies.get(value.contract)
        if reply is None:
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
            reply(LocalRoundFailed(value.round, value.reason, value.overwritten))
