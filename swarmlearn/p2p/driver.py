"""The trio driver of a sans-IO core: the real-node counterpart of the simulator.

Theory of operation
-------------------
There is one driver: the p2p host (:class:`~swarmlearn.p2p.service.P2PService`) runs its
core with it, whether that core is the bare p2p node or a swarm node's whole composition
(ledger over gossip, SL rounds). One task owns the core. Everything that happens to the
node (a message from a connection, a timer, a local request) becomes an input on one memory
channel; the task feeds each input to ``core.handle(input, now)`` with the driver's clock
and carries out the effects in order, as the simulator does:

- ``Send``/``Broadcast``: handed to the :class:`Outbox` (the host: the peer's link, a
  bounded queue; a full queue drops the message, as a lossy link would: the protocols
  repair loss themselves);
- ``SetTimer``/``CancelTimer``: one task per timer in the driver's nursery, cancelled through
  its cancel scope, tagged with a generation so a replaced timer never fires;
- ``Persist``: the store writes it; records that must be durable are fsynced in a worker
  thread, and nothing after them runs until the disk said yes. The records of one input are
  all written first (writing early is always safe), and the fsync waits until the first
  effect that must follow a durable one: a proposer's proposal and its own prevote, say,
  share one fsync instead of taking two in turn;
- ``Deliver``: handed to the node's ``on_deliver`` callback;
- ``Log``/``Metric``: the logging module and a counters dict.

A core that raises is a bug: the exception propagates and stops the node (loudly), rather
than letting it go on in an unknown state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import trio

from swarmlearn.p2p.wire import Message
from swarmlearn.sansio import (
    Broadcast,
    CancelTimer,
    Core,
    Deliver,
    Effect,
    Input,
    Log,
    Metric,
    NodeId,
    Persist,
    Send,
    SetTimer,
    TimerFired,
)

log = logging.getLogger(__name__)

INPUT_QUEUE_MAX = 10_000
#: Inputs handled in a row before the driver lets the link tasks run (see ``_drain``).
DRAIN_MAX = 64
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class Outbox(Protocol):
    def send(self, peer: NodeId, message: Message) -> None: ...

    def peers(self) -> list[NodeId]: ...


class Store(Protocol):
    def write(self, stream: str, record: Any) -> bool:
        """Append without waiting for the disk; True if it must be synced before what follows."""
        ...

    def sync(self, streams: Iterable[str]) -> None: ...


class CoreDriver:
    def __init__(
        self,
        core: Core,
        outbox: Outbox,
        store: Store | None,
        on_deliver: Callable[[Any], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.core = core
        self.outbox = outbox
        self.store = store
        self.on_deliver = on_deliver
        self.clock = clock
        #: Called with each input once the core has handled it and its effects ran.
        self.on_handled: Callable[[Input], None] | None = None
        self.metrics: dict[str, float] = {}
        self.inputs_handled = 0
        self._send_input, self._inputs = trio.open_memory_channel[Input](INPUT_QUEUE_MAX)
        self._timers: dict[Any, tuple[int, trio.CancelScope]] = {}
        self._generation = 0
        self._nursery: trio.Nursery | None = None

    def submit(self, event: Input) -> bool:
        """Queue an input; False (and dropped) when the node is overloaded."""
        try:
            self._send_input.send_nowait(event)
        except trio.WouldBlock:
            log.warning("input queue full: dropped %s", type(event).__name__)
            return False
        return True

    async def run(
        self, first: Input, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Handle ``first`` (the core's ``Start``), report ready, then every queued input."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._handle(first)
            task_status.started()
            async for event in self._inputs:
                await self._handle(event)
                await self._drain()

    async def _drain(self) -> None:
        """Handle the inputs already queued, up to ``DRAIN_MAX``, without yielding between them.

        A burst of messages (votes arriving on every link at once) is handled before the link
        writers run, so each link sends the burst's messages in one write: one TLS record and
        one system call a link instead of one per message (natural batching: nothing waits for
        a batch to fill; a lone input goes out as soon as it is handled).
        """
        for _ in range(DRAIN_MAX):
            try:
                event = self._inputs.receive_nowait()
            except trio.WouldBlock:
                return
            await self._handle(event)

    async def _handle(self, event: Input) -> None:
        effects = self.core.handle(event, self.clock())
        self.inputs_handled += 1
        unsynced = self._write(effects)  # (index, stream) of each record to make durable
        for index, effect in enumerate(effects):
            if isinstance(effect, Persist):
                continue
            if unsynced and unsynced[0][0] < index:  # a durable record comes before it
                unsynced = await self._sync(unsynced, index)
            await self._execute(effect)
        if unsynced:
            await self._sync(unsynced, len(effects))
        if self.on_handled is not None:
            self.on_handled(event)

    def _write(self, effects: list[Effect]) -> list[tuple[int, str]]:
        if self.store is None:
            return []
        return [
            (index, effect.stream)
            for index, effect in enumerate(effects)
            if isinstance(effect, Persist) and self.store.write(effect.stream, effect.record)
        ]

    async def _sync(self, unsynced: list[tuple[int, str]], before: int) -> list[tuple[int, str]]:
        """fsync the streams of the durable records before effect ``before`` (an fsync covers
        the later records of its file too); what is still unsynced after."""
        assert self.store is not None
        streams = {stream for index, stream in unsynced if index < before}
        await trio.to_thread.run_sync(self.store.sync, streams)
        return [(index, stream) for index, stream in unsynced if stream not in streams]

    async def _execute(self, effect: Effect) -> None:
        match effect:
            case Send(to, message):
                self.outbox.send(to, message)
            case Broadcast(message, peers):
                for peer in peers if peers is not None else self.outbox.peers():
                    self.outbox.send(peer, message)
            case SetTimer(tag, delay_s):
                self._set_timer(tag, delay_s)
            case CancelTimer(tag):
                found = self._timers.pop(tag, None)
                if found is not None:
                    found[1].cancel()
            case Persist():
                pass  # written by _handle before any effect
            case Deliver(value):
                self.on_deliver(value)
            case Log(text, level, fields):
                log.log(
                    LEVELS.get(level, logging.INFO), "%s %s", text, dict(fields) if fields else ""
                )
            case Metric(name, value):
                self.metrics[name] = self.metrics.get(name, 0.0) + value

    def _set_timer(self, tag: Any, delay_s: float) -> None:
        assert self._nursery is not None
        old = self._timers.pop(tag, None)
        if old is not None:
            old[1].cancel()
        self._generation += 1
        generation = self._generation
        scope = trio.CancelScope()
        self._timers[tag] = (generation, scope)

        async def fire() -> None:
            with scope:
                await trio.sleep(max(0.0, delay_s))
                current = self._timers.get(tag)
                if current is not None and current[0] == generation:
                    del self._timers[tag]
                    self.submit(TimerFired(tag))

        self._nursery.start_soon(fire)
