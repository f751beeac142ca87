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
    def __init__(self) -> None:
        self.handled = 0

    def handle(self, event: Input, now: float) -> list[Effect]:
        self.handled += 1
        return []


class NoPeers:
    def send(self, peer: str, message: Message) -> None:
        raise AssertionError("nothing is sent")

    def peers(self) -> list[str]:
        return []


def observed_counts(burst: int) -> tuple[set[int], int]:
    """What a busy task sees of the handled count while ``burst`` queued inputs are handled."""
    core = Counting()
    seen: set[int] = set()

    async def main() -> None:
        driver = CoreDriver(core, NoPeers(), None, lambda value: None)
        async with trio.open_nursery() as nursery:
            await nursery.start(driver.run, Start())
            for _ in range(burst):
                assert driver.submit(Start())
            while core.handled < burst + 1:
                seen.add(core.handled - 1)  # the Start of run() is not part of the burst
                await trio.lowlevel.checkpoint()
            seen.add(core.handled - 1)
            nursery.cancel_scope.cancel()

    trio.run(main)
    return seen, core.handled - 1


def test_a_burst_is_handled_whole_before_another_task_runs() -> None:
    seen, handled = observed_counts(10)
    assert handled == 10
    assert seen == {0, 10}


def test_a_long_burst_yields_after_drain_max_inputs_in_a_row() -> None:
    burst = 3 * (DRAIN_MAX + 1)  # each turn: one input from the loop, DRAIN_MAX drained
    seen, handled = observed_counts(burst)
    assert handled == burst
    assert seen == {0, DRAIN_MAX + 1, 2 * (DRAIN_MAX + 1), burst}
