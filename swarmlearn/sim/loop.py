"""The simulator's event loop: a heap of (time, sequence, event) in virtual time.

Single-threaded and deterministic: events at the same virtual time run in the order they were
scheduled (the sequence number breaks ties), time jumps straight to the next event, and nothing
here reads a clock or draws a random number. A run stops when a condition holds, at a
virtual-time limit, or when an event budget is spent; :class:`RunOutcome` says which.
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Callable
from dataclasses import dataclass

Action = Callable[[], None]


class Stop(enum.Enum):
    CONDITION = "condition"
    TIME_LIMIT = "time limit"
    EVENT_BUDGET = "event budget"
    IDLE = "no events left"


class _Entry:
    __slots__ = ("action", "cancelled", "time")

    def __init__(self, time: float, action: Action) -> None:
        self.time = time
        self.action = action
        self.cancelled = False


class Handle:
    """Returned by :meth:`EventLoop.call_at`; :meth:`cancel` keeps the event from running."""

    __slots__ = ("_entry",)

    def __init__(self, entry: _Entry) -> None:
        self._entry = entry

    def cancel(self) -> None:
        self._entry.cancelled = True

    @property
    def time(self) -> float:
        return self._entry.time


@dataclass(frozen=True)
class RunOutcome:
    stop: Stop
    time: float
    events: int


class EventLoop:
    def __init__(self) -> None:
        self.now = 0.0
        self.events_run = 0
        self._heap: list[tuple[float, int, _Entry]] = []
        self._seq = 0

    def call_at(self, time: float, action: Action) -> Handle:
        """Run ``action`` at virtual ``time`` (not before now)."""
        if time < self.now:
            raise ValueError(f"cannot schedule in the past: {time} < {self.now}")
        self._seq += 1
        entry = _Entry(time, action)
        heapq.heappush(self._heap, (time, self._seq, entry))
        return Handle(entry)

    def call_later(self, delay_s: float, action: Action) -> Handle:
        return self.call_at(self.now + max(0.0, delay_s), action)

    @property
    def pending(self) -> int:
        return len(self._heap)

    def next_time(self) -> float | None:
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def run(
        self,
        *,
        until: Callable[[], bool] | None = None,
        time_limit: float | None = None,
        max_events: int | None = None,
    ) -> RunOutcome:
        """Run events in order until ``until()`` holds, past ``time_limit``, or ``max_events``."""
        budget_end = None if max_events is None else self.events_run + max_events
        while True:
            if until is not None and until():
                return RunOutcome(Stop.CONDITION, self.now, self.events_run)
            if budget_end is not None and self.events_run >= budget_end:
                return RunOutcome(Stop.EVENT_BUDGET, self.now, self.events_run)
            next_time = self.next_time()
            if next_time is None:
                return RunOutcome(Stop.IDLE, self.now, self.events_run)
            if time_limit is not None and next_time > time_limit:
                self.now = max(self.now, time_limit)
                return RunOutcome(Stop.TIME_LIMIT, self.now, self.events_run)
            _, _, entry = heapq.heappop(self._heap)
            self.now = entry.time
            self.events_run += 1
            entry.action()
