"""Checkers: watch a simulated run from outside and say what went wrong, and of which kind.

A checker sees every ``Deliver`` effect (and may inspect the simulator) and answers three
questions: is this delivery a violation (safety)? has the run converged (liveness: asked in
the healed phase until it says yes or the budget runs out)? anything wrong at the end?

Protocols add their own checkers to :data:`REGISTRY` with :func:`register`, so scenarios and
the CLI can name them. Failures are classed: ``crash`` (a core raised), ``safety`` (a checker
saw something that must never happen), ``liveness`` (no convergence within the budget).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from swarmlearn.sansio import NodeId

if TYPE_CHECKING:
    from swarmlearn.sim.cluster import Simulator


class FailureKind(enum.StrEnum):
    CRASH = "crash"
    SAFETY = "safety"
    LIVENESS = "liveness"


@dataclass(frozen=True)
class Violation:
    checker: str
    kind: FailureKind
    message: str
    time: float


class Checker:
    """Base checker: sees nothing wrong and is always converged. Override what you need."""

    name = "checker"

    def on_deliver(
        self, node: NodeId, incarnation: int, value: Any, time: float
    ) -> Violation | None:
        return None

    def converged(self, sim: Simulator) -> bool:
        return True

    def final(self, sim: Simulator) -> list[Violation]:
        return []

    def progress(self, sim: Simulator) -> str:
        return ""

    def report(self, sim: Simulator) -> list[str]:
        """Figures measured from outside (latencies, say), printed under the checker's line."""
        return []


REGISTRY: dict[str, Callable[[], Checker]] = {}


def register(name: str) -> Callable[[Callable[[], Checker]], Callable[[], Checker]]:
    def add(factory: Callable[[], Checker]) -> Callable[[], Checker]:
        if name in REGISTRY:
            raise ValueError(f"checker {name!r} is already registered")
        REGISTRY[name] = factory
        return factory

    return add


#: Turns a delivered value into (slot, decision), or None when the checker does not care.
Extract = Callable[[Any], tuple[Hashable, Any] | None]


class AgreementChecker(Checker):
    """No two deliveries decide different values for the same slot, on any nodes (safety).

    With ``extract`` returning ``(height, block_hash)`` it is consensus agreement; with
    ``(round, merged_hash)`` it checks that every participant merged identical weights.
    """

    def __init__(self, extract: Extract, name: str = "agreement") -> None:
        self.name = name
        self.extract = extract
        self.decided: dict[Hashable, tuple[Any, NodeId]] = {}

    def on_deliver(
        self, node: NodeId, incarnation: int, value: Any, time: float
    ) -> Violation | None:
        found = self.extract(value)
        if found is None:
            return None
        slot, decision = found
        first = self.decided.setdefault(slot, (decision, node))
        if first[0] != decision:
            return Violation(
                self.name,
                FailureKind.SAFETY,
                f"slot {slot!r}: {first[1]} decided {first[0]!r:.80}, "
                f"{node} decided {decision!r:.80}",
                time,
            )
        return None


class BoundedQueuesChecker(Checker):
    """No link ever held more than ``max_in_flight`` messages at once."""

    name = "bounded-queues"

    def __init__(self, max_in_flight: int = 10_000) -> None:
        self.max_in_flight = max_in_flight

    def final(self, sim: Simulator) -> list[Violation]:
        worst = max(
            ((stats.in_flight_max, link) for link, stats in sim.network.stats().items()),
            default=(0, ("", "")),
        )
        if worst[0] <= self.max_in_flight:
            return []
        message = (
            f"link {worst[1][0]}->{worst[1][1]} held {worst[0]} messages (max {self.max_in_flight})"
        )
        return [Violation(self.name, FailureKind.SAFETY, message, sim.now)]


register("bounded-queues")(BoundedQueuesChecker)
