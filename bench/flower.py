"""Flower's FedAvg beside our swarm on the demo's workload: wall time and final accuracy.

Three ways to train the same thing (swarmlearn.demo.digits: sklearn's digits split with label
skew, the small MLP with BatchNorm, the same seeded start, steps per round and mini-batches),
N nodes x R rounds x E local epochs:

- ours: ``swarmlearn demo --nodes N --rounds R --epochs-per-round E --json FILE`` (N real
  ``swarm-node`` daemons on loopback with mutual TLS, N training processes with the PyTorch
  SwarmCallback); wall time is the demo's own: certificates, daemons, training, merges;
- Flower's simulation engine (Ray), FedAvg weighted by examples, the global model scored on the
  shared test set after every round;
- Flower's deployment runtime: a SuperLink and N SuperNodes as processes on loopback (insecure
  local mode), the App submitted with ``flwr run``.

Flower runs from .venv-peers (``make bench-peers``) through bench/peers/flower_run.py, so this
file runs in the project's .venv; without .venv-peers, Flower's figures are null. Wall times
are medians of the runs (interleaved: ours, simulation, deployment, ours, ...).

    python bench/flower.py [--quick] [--nodes N --rounds R --epochs E --repeat K]

``--quick`` (2 x 2, one run) is a smoke run: ours and Flower's simulation run at the same time
(compare their accuracy, not their time), and deployment mode is left out: its 3 s polls on
both sides (the SuperNode's pull loop, the ServerApp's wait for replies) and a process per
ClientApp take it past 30 s even at that size.

Targets (issue 10): our final accuracy within 1 point of Flower's FedAvg; our wall time below
Flower's deployment mode for 10 nodes x 10 rounds.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))

from peerproc import MISSING, peers_python  # noqa: E402

SWARMLEARN = Path(sys.executable).parent / "swarmlearn"
RUNNER = HERE / "peers" / "flower_run.py"
RUN_TIMEOUT_S = 600.0  # ours and the simulation
DEPLOY_TIMEOUT_S = 1800.0  # 10 x 10 in deployment mode takes 450-600 s here
MODES = ("sim", "deploy")
QUICK_SKIPS = "not run by --quick: a SuperLink, SuperNodes and flwr run take 30+ s even at 2 x 2"
ACCURACY_POINTS_MAX = 1.0


@dataclass(frozen=True)
class Plan:
    nodes: int
    rounds: int
    epochs: int
    repeat: int
    modes: tuple[str, ...] = MODES
    parallel: bool = False  # --quick: ours and Flower at the same time, to stay under 30 s


FULL = Plan(nodes=10, rounds=10, epochs=1, repeat=3)
QUICK = Plan(nodes=2, rounds=2, epochs=1, repeat=1, modes=("sim",), parallel=True)


def run_ours(plan: Plan) -> dict[str, Any]:
    """One ``swarmlearn demo`` run; its JSON, or ``{"error": ...}``."""
    with tempfile.TemporaryDirectory(prefix="bench-flower-ours-") as tmp:
        out = Path(tmp) / "demo.json"
        command = [
            str(SWARMLEARN), "demo", "--nodes", str(plan.nodes), "--rounds", str(plan.rounds),
            "--epochs-per-round", str(plan.epochs), "--workdir", str(Path(tmp) / "demo"),
            "--json", str(out),
        ]  # fmt: skip
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            return {"error": f"swarmlearn demo: no result within {RUN_TIMEOUT_S} s"}
        if not out.exists():
            tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["(no output)"]
            return {"error": f"swarmlearn demo exit {done.returncode}: {tail[0]}"}
        result: dict[str, Any] = json.loads(out.read_text())
    accuracies = list(result["swarm_accuracy"].values())
    return {
        "wall_s": result["wall_s"],
        "train_s": result["train_s"],
        "final_accuracy": statistics.mean(accuracies),
        "identical": result["identical"],
    }


def run_flower(python: Path, mode: str, plan: Plan) -> dict[str, Any]:
    """One Flower run in ``mode``; flower_run.py's JSON, or ``{"error": ...}``."""
    timeout_s = DEPLOY_TIMEOUT_S if mode == "deploy" else RUN_TIMEOUT_S
    command = [
        str(python), str(RUNNER), "--mode", mode, "--nodes", str(plan.nodes),
        "--rounds", str(plan.rounds), "--epochs", str(plan.epochs),
        "--timeout-s", str(timeout_s - 30),  # it stops its own processes first
    ]  # fmt: skip
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {timeout_s} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = done.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return {"error": f"flower_run.py exit {done.returncode}: {tail[0]}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def summarise(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the runs that worked; null figures and the reason when none did."""
    good = [r for r in runs if "error" not in r]
    figures: dict[str, Any] = {
        f"{name}_wall_s": None,
        f"{name}_final_accuracy": None,
        f"{name}_status": "ran" if good else runs[0]["error"][:300],
    }
    if not good:
        return figures
    walls = [r["wall_s"] for r in good]
    figures[f"{name}_wall_s"] = round(statistics.median(walls), 2)
    figures[f"{name}_wall_runs_s"] = [round(w, 2) for w in walls]
    accuracy = statistics.median(r["final_accuracy"] for r in good)
    figures[f"{name}_final_accuracy"] = round(accuracy, 4)
    if len(good) < len(runs):
        figures[f"{name}_status"] = f"{len(runs) - len(good)} of {len(runs)} runs failed"
    return figures


def one_of_each(plan: Plan, python: Path | None) -> dict[str, dict[str, Any]]:
    """One run of ours and of each Flower mode; side by side when ``plan.parallel``."""

    def flower(mode: str) -> dict[str, Any]:
        if mode not in plan.modes:
            return {"error": QUICK_SKIPS}
        return run_flower(python, mode, plan) if python else {"error": MISSING}

    jobs: dict[str, Callable[[], dict[str, Any]]] = {"ours": lambda: run_ours(plan)}
    for mode in MODES:
        jobs[f"flower_{mode}"] = functools.partial(flower, mode)
    if not plan.parallel:
        return {name: job() for name, job in jobs.items()}
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


def measure(plan: Plan) -> dict[str, Any]:
    python = peers_python()
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "flower_sim": [], "flower_deploy": []}
    for number in range(1, plan.repeat + 1):
        for name, last in one_of_each(plan, python).items():
            runs[name].append(last)
            said = last.get("error") or (
                f"{last['wall_s']:.1f} s, accuracy {last['final_accuracy']:.4f}"
            )
            print(f"run {number}/{plan.repeat} {name}: {said}", flush=True)
    figures: dict[str, Any] = {"nodes": plan.nodes, "rounds": plan.rounds, "epochs": plan.epochs}
    if plan.parallel:
        figures["note"] = "ours and Flower ran at the same time: compare accuracy, not time"
    for name, results in runs.items():
        figures.update(summarise(name, results))
    figures["ours_identical_on_every_node"] = all(r.get("identical") for r in runs["ours"])
    return figures


def compare(figures: dict[str, Any]) -> None:
    """The two target figures, null when a side is missing."""
    ours = figures["ours_final_accuracy"]
    fedavg = figures["flower_sim_final_accuracy"] or figures["flower_deploy_final_accuracy"]
    gap = None if ours is None or fedavg is None else round(abs(ours - fedavg) * 100, 2)
    figures["accuracy_gap_points"] = gap
    deploy, wall = figures["flower_deploy_wall_s"], figures["ours_wall_s"]
    ratio = None if deploy is None or wall is None else round(wall / deploy, 3)
    figures["ours_vs_flower_deploy_wall"] = ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="2 x 2, one run, ours beside the simulation only"
    )
    parser.add_argument("--nodes", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--repeat", type=int)
    args = parser.parse_args()
    base = QUICK if args.quick else FULL
    plan = Plan(
        args.nodes or base.nodes,
        args.rounds or base.rounds,
        args.epochs or base.epochs,
        args.repeat or base.repeat,
        base.modes,
        base.parallel,
    )
    started = time.monotonic()
    figures = measure(plan)
    compare(figures)
    figures["bench_s"] = round(time.monotonic() - started, 1)
    targets = {
        "accuracy_gap_points": f"<= {ACCURACY_POINTS_MAX}",
        "ours_vs_flower_deploy_wall": "< 1 (10 nodes x 10 rounds)",
    }
    gap, ratio = figures["accuracy_gap_points"], figures["ours_vs_flower_deploy_wall"]
    met = (
        plan.nodes >= FULL.nodes
        and plan.rounds >= FULL.rounds
        and gap is not None
        and gap <= ACCURACY_POINTS_MAX
        and ratio is not None
        and ratio < 1
    )
    print(json.dumps({"figures": figures, "targets": targets, "met": met}))


if __name__ == "__main__":
    main()
