"""Deterministic discrete-event simulator: the same sans-IO cores as real nodes, one seed per run.

``python -m swarmlearn.sim --seed N --nodes K --scenario NAME`` runs a scenario and prints
its summary and fingerprint; :func:`run_scenario` does the same from Python.
"""

from swarmlearn.sim.checkers import (
    REGISTRY,
    AgreementChecker,
    BoundedQueuesChecker,
    Checker,
    FailureKind,
    Violation,
    register,
)
from swarmlearn.sim.cluster import CoreCrashed, EffectPolicy, NodeContext, NodeFactory, Simulator
from swarmlearn.sim.loop import EventLoop, RunOutcome, Stop
from swarmlearn.sim.network import LinkConfig, Network, PortConfig
from swarmlearn.sim.rand import SeedTree
from swarmlearn.sim.scenarios import SCENARIOS, RunResult, Scenario, run_scenario

__all__ = [
    "REGISTRY",
    "SCENARIOS",
    "AgreementChecker",
    "BoundedQueuesChecker",
    "Checker",
    "CoreCrashed",
    "EffectPolicy",
    "EventLoop",
    "FailureKind",
    "LinkConfig",
    "Network",
    "NodeContext",
    "NodeFactory",
    "PortConfig",
    "RunOutcome",
    "RunResult",
    "Scenario",
    "SeedTree",
    "Simulator",
    "Stop",
    "Violation",
    "register",
    "run_scenario",
]
