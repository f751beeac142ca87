"""Named scenarios and the runner: a fault phase, then a healed phase that must converge.

A :class:`Scenario` names a protocol (a core factory), its checkers, the links, and a
``setup`` that schedules the workload and the faults of the fault phase, drawing only from
the workload and fault sub-seeds. :func:`run_scenario` runs it:

1. start every node; run the fault phase (``fault_phase_s`` of virtual time);
2. heal: remove partitions, restart crashed nodes (paused ones resume by themselves);
3. run until every checker says converged, within ``converge_budget_s``.

A core that raises is a ``crash`` failure; a checker violation a ``safety`` failure (the run
stops at once); no convergence within the budget a ``liveness`` failure. Every result carries
the fingerprint and the one-line command that replays it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from swarmlearn.sim.checkers import BoundedQueuesChecker, Checker, FailureKind, Violation
from swarmlearn.sim.cluster import CoreCrashed, NodeFactory, Simulator
from swarmlearn.sim.echo import EchoChecker, EchoGossip
from swarmlearn.sim.loop import Stop
from swarmlearn.sim.network import LinkConfig


@dataclass(frozen=True)
class SetupContext:
    sim: Simulator
    workload: random.Random
    faults: random.Random
    fault_phase_s: float
    notes: list[str] = field(default_factory=list)  # derived parameters, printed at start


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    factory: Callable[[], NodeFactory]
    checkers: Callable[[], list[Checker]]
    setup: Callable[[SetupContext], None]
    link: LinkConfig = field(default_factory=LinkConfig)
    default_nodes: int = 10
    fault_phase_s: float = 20.0
    converge_budget_s: float = 60.0
    #: For nodes that need more than a name (a certificate, say): (seed, count) -> their ids,
    #: derived from the seed; the factory then gets them in its NodeContext as usual.
    node_ids: Callable[[int, int], list[str]] | None = None
    #: Runs before the nodes start (their first messages create links): per-pair link
    #: configs (``sim.network.link_factory``), node ports, drawing from ``sim.seeds``.
    prepare: Callable[[Simulator], None] | None = None


SCENARIOS: dict[str, Scenario] = {}
DEFAULT_SCENARIO = "gossip"


def scenario(sc: Scenario) -> Scenario:
    if sc.name in SCENARIOS:
        raise ValueError(f"scenario {sc.name!r} is already registered")
    SCENARIOS[sc.name] = sc
    return sc


@dataclass(frozen=True)
class RunResult:
    scenario: str
    seed: int
    nodes: int
    failure: FailureKind | None
    message: str
    virtual_time_s: float
    events: int
    messages: int
    bytes: int
    deliveries: int
    crashes: int
    writes_lost: int
    fingerprint: str
    header: tuple[str, ...]
    checker_lines: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def replay(self) -> str:
        return (
            f"python -m swarmlearn.sim --seed {self.seed} --nodes {self.nodes} "
            f"--scenario {self.scenario}"
        )

    def summary(self) -> list[str]:
        status = "ok" if self.ok else f"FAILED ({self.failure}): {self.message}"
        lines = [
            f"scenario {self.scenario}, {self.nodes} nodes: {status}",
            f"virtual time {self.virtual_time_s:.3f} s, {self.events} events, "
            f"{self.messages} messages, {self.bytes} bytes, {self.deliveries} deliveries, "
            f"{self.crashes} crashes",
            *self.checker_lines,
        ]
        if not self.ok:
            lines.append(f"replay: {self.replay}")
        lines.append(f"fingerprint: {self.fingerprint}")
        return lines


def node_names(count: int) -> list[str]:
    width = len(str(count - 1))
    return [f"n{index:0{width}d}" for index in range(count)]


def run_scenario(
    name: str = DEFAULT_SCENARIO,
    seed: int = 0,
    nodes: int | None = None,
    *,
    verbose: bool = False,
) -> RunResult:
    sc = SCENARIOS[name]
    count = nodes if nodes is not None else sc.default_nodes
    checkers = [*sc.checkers(), BoundedQueuesChecker()]
    ids = sc.node_ids(seed, count) if sc.node_ids is not None else node_names(count)
    sim = Simulator(seed, ids, sc.factory(), link=sc.link, checkers=checkers, verbose=verbose)
    context = SetupContext(
        sim, sim.seeds.rng("workload"), sim.seeds.rng("faults"), sc.fault_phase_s
    )
    header = [
        f"SEED={seed}",
        f"scenario {name}: {sc.description}",
        f"nodes {count}, links {sc.link.describe()}",
    ]
    header.append(
        f"fault phase {sc.fault_phase_s:g} s, convergence budget {sc.converge_budget_s:g} s"
    )
    failure: FailureKind | None = None
    message = ""
    try:
        if sc.prepare is not None:
            sc.prepare(sim)
        sim.start()
        sc.setup(context)
        stop_on_violation = lambda: bool(sim.violations)  # noqa: E731
        sim.run(until=stop_on_violation, time_limit=sc.fault_phase_s)
        if not sim.violations:
            heal(sim)
            deadline = sc.fault_phase_s + sc.converge_budget_s
            outcome = sim.run(
                until=lambda: bool(sim.violations) or sim.converged(), time_limit=deadline
            )
            if not sim.violations and outcome.stop is not Stop.CONDITION:
                failure = FailureKind.LIVENESS
                progress = "; ".join(filter(None, (c.progress(sim) for c in sim.checkers)))
                message = (
                    f"not converged {sc.converge_budget_s:g} s after healing "
                    f"({outcome.stop.value}): {progress}"
                )
        sim.violations.extend(v for checker in sim.checkers for v in checker.final(sim))
    except CoreCrashed as error:
        failure, message = FailureKind.CRASH, str(error)
    if sim.violations and failure is None:
        first: Violation = sim.violations[0]
        failure = first.kind
        message = f"{first.checker} at {first.time:.6f} s: {first.message}"
    totals = sim.counters
    return RunResult(
        scenario=name,
        seed=seed,
        nodes=count,
        failure=failure,
        message=message,
        virtual_time_s=sim.now,
        events=sim.loop.events_run,
        messages=totals.messages_sent,
        bytes=totals.bytes_sent,
        deliveries=totals.deliveries,
        crashes=totals.crashes,
        writes_lost=totals.writes_lost,
        fingerprint=sim.fingerprint,
        header=(*header, *context.notes),
        checker_lines=tuple(
            line
            for c in sim.checkers
            for line in (
                f"checker {c.name}: {'ok' if _clean(sim, c) else 'violated'}",
                *(f"  {figure}" for figure in c.report(sim)),
            )
        ),
    )


def _clean(sim: Simulator, checker: Checker) -> bool:
    return not any(v.checker == checker.name for v in sim.violations)


def heal(sim: Simulator) -> None:
    """End the fault phase: no partitions, every crashed node restarted, honest policies."""
    sim.network.heal()
    for node_id in sim.node_ids:
        sim.set_policy(node_id, None)
        if not sim.nodes[node_id].alive:
            sim.restart(node_id)


# ---------------------------------------------------------------- workload and faults


def rumor_workload(context: SetupContext, rate_per_s: float = 2.0) -> None:
    """Requests at random nodes, Poisson arrivals, during the fault phase."""
    sim, rng = context.sim, context.workload
    at = rng.expovariate(rate_per_s)
    count = 0
    while at < context.fault_phase_s:
        sim.request(rng.choice(sim.node_ids), f"r{count}".encode(), at=at)
        count += 1
        at += rng.expovariate(rate_per_s)
    context.notes.append(f"workload: {count} requests over {context.fault_phase_s:g} s")


def random_faults(
    context: SetupContext, *, kinds: tuple[str, ...], rate_per_s: float = 0.5
) -> None:
    """Schedule faults of the given kinds at random times in the fault phase."""
    sim, rng = context.sim, context.faults
    at = rng.expovariate(rate_per_s)
    planned: dict[str, int] = {}
    while at < context.fault_phase_s:
        kind = rng.choice(kinds)
        node = rng.choice(sim.node_ids)
        duration = rng.uniform(0.5, 5.0)
        _schedule_fault(sim, kind, node, at, duration, rng)
        planned[kind] = planned.get(kind, 0) + 1
        at += rng.expovariate(rate_per_s)
    context.notes.append(
        "faults planned: " + (", ".join(f"{k} x{n}" for k, n in sorted(planned.items())) or "none")
    )


def _schedule_fault(
    sim: Simulator, kind: str, node: str, at: float, duration: float, rng: random.Random
) -> None:
    loop = sim.loop
    if kind in ("crash", "crash-lossy"):  # lossy: unsynced writes lost or torn as well
        loop.call_at(at, lambda: sim.crash(node, lose_unsynced=kind == "crash-lossy"))
        loop.call_at(at + duration, lambda: _restart_if_down(sim, node))
    elif kind == "partition":
        loop.call_at(at, lambda: sim.network.isolate(node, sim.node_ids))
        loop.call_at(at + duration, sim.network.heal)
    elif kind == "split":
        loop.call_at(at, lambda: _random_split(sim))
        loop.call_at(at + duration, sim.network.heal)
    elif kind == "clog":
        other = rng.choice([n for n in sim.node_ids if n != node] or [node])
        loop.call_at(at, lambda: sim.network.clog(node, other, sim.now + duration))
    elif kind == "pause":
        loop.call_at(at, lambda: sim.pause(node, duration))
    elif kind == "skew":
        offset, drift = rng.uniform(-5, 5), rng.uniform(-0.05, 0.05)
        loop.call_at(at, lambda: sim.set_clock(node, offset_s=offset, drift=drift))
    else:
        raise ValueError(f"unknown fault kind {kind!r}")


def _restart_if_down(sim: Simulator, node: str) -> None:
    if not sim.nodes[node].alive:
        sim.restart(node)


def _random_split(sim: Simulator) -> None:
    sim.network.random_split(sim.node_ids)


ALL_FAULTS = ("crash", "partition", "split", "clog", "pause", "skew")  # and "crash-lossy"


def _echo_scenario(
    name: str,
    description: str,
    faults: tuple[str, ...],
    *,
    rate_per_s: float = 0.5,
    link: LinkConfig | None = None,
) -> Scenario:
    def setup(context: SetupContext) -> None:
        rumor_workload(context)
        if faults:
            random_faults(context, kinds=faults, rate_per_s=rate_per_s)

    return scenario(
        Scenario(
            name=name,
            description=description,
            factory=EchoGossip.factory,
            checkers=lambda: [EchoChecker()],
            setup=setup,
            link=link or LinkConfig(),
        )
    )


_echo_scenario("gossip", "echo gossip under every fault kind at random", ALL_FAULTS)
_echo_scenario("calm", "echo gossip, no faults", ())
_echo_scenario(
    "partitions", "echo gossip with isolated nodes and random splits", ("partition", "split")
)
_echo_scenario("crashes", "echo gossip with crashes and restarts", ("crash",), rate_per_s=1.0)
_echo_scenario(
    "pauses",
    "echo gossip with paused nodes, clogged links and skewed clocks",
    ("pause", "clog", "skew"),
)
_echo_scenario(
    "lossy",
    "echo gossip over links that lose, duplicate and reorder",
    (),
    link=LinkConfig(
        latency_min_s=0.005, latency_tail_s=0.02, loss=0.1, duplicate=0.05, reorder=0.1
    ),
)
