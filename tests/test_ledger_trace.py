"""bench/ledger_trace.py only records: a traced run is the same run (same fingerprint), and
its report says where the time went."""

from __future__ import annotations

import contextlib
import importlib.util
import io
from pathlib import Path
from types import ModuleType

import pytest

import swarmlearn.consensus.tendermint.gossip_simulation  # noqa: F401  (registers ledger-gossip)
from swarmlearn.sim.scenarios import run_scenario

pytestmark = pytest.mark.sim


def load_trace() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "bench" / "ledger_trace.py"
    spec = importlib.util.spec_from_file_location("ledger_trace", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_traced_run_is_the_same_run_and_reports_each_step() -> None:
    plain = run_scenario("ledger-gossip", seed=2, nodes=18)
    trace = load_trace()
    uninstall = trace.install()
    try:
        traced = run_scenario("ledger-gossip", seed=2, nodes=18)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            trace.report()
    finally:
        uninstall()
    assert plain.ok
    assert traced.fingerprint == plain.fingerprint
    text = out.getvalue()
    assert "proposal->commit@submitter" in text
    assert "votes/prevote" in text
    assert run_scenario("ledger-gossip", seed=2, nodes=18).fingerprint == plain.fingerprint
