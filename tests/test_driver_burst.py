"""The driver handles a burst of queued inputs before any other task runs (natural batching).

A link's writer sends whatever is queued on it when it runs; if the driver yielded after each
input, every input's sends would go out as a write of their own (a TLS record and a system call
per message per link). So the driver drains what is queued, up to ``DRAIN_MAX`` inputs, without
yielding: another task sees none of a burst handled or all of it, and after ``DRAIN_MAX`` in a
row the others get their turn.
"""

from __future__ import annotations

import trio

from swarmlearn.p2p.driver import DRAIN_MAX, CoreDriver
from swarmlearn.p2p.wire import Message
from swarmlearn.sansio import Effect, Input, Start


class Counting:
    """Records, for each input, how many times the other task had run by then."""

    def __init__(self) -> None:
        self.ticks = 0  # the other task's turns
        self.seen: list[int] = []

    def handle(self, event: Input, now: float) -> list[Effect]:
        self.seen.append(self.ticks)
        return []


class NoPeers:
    def send(self, peer: str, message: Message) -> None:
        raise AssertionError("nothing is sent")

    def peers(self) -> list[str]:
        return []


def ticks_per_input(burst: int) -> list[int]:
    """The other task's turns seen by each of ``burst`` inputs queued at once."""
    core = Counting()

    async def main() -> None:
        driver = CoreDriver(core, NoPeers(), None, lambda value: None)
        async with trio.open_nursery() as nursery:
            await nursery.start(driver.run, Start())
            for _ in range(burst):
                assert driver.submit(Start())
            while len(core.seen) < burst + 1:
                core.ticks += 1
                await trio.lowlevel.checkpoint()
            nursery.cancel_scope.cancel()

    trio.run(main)
    return core.seen[1:]  # the Start that run() handles first is not part of the burst


def test_a_burst_is_handled_whole_before_another_task_runs() -> None:
    seen = ticks_per_input(10)
    assert len(seen) == 10
    assert len(set(seen)) == 1


def test_a_long_burst_yields_after_drain_max_inputs_in_a_row() -> None:
    """Each turn of the driver takes one input from its loop and drains ``DRAIN_MAX`` more;
    no other task runs within a turn, and over three turns the other task runs (it runs once
    in each of trio's scheduling batches, so at least once between the first and the last)."""
    turn = DRAIN_MAX + 1
    seen = ticks_per_input(3 * turn)
    turns = [seen[start : start + turn] for start in range(0, len(seen), turn)]
    assert [len(set(inputs)) for inputs in turns] == [1, 1, 1]
    assert turns[0][0] < turns[2][0]
