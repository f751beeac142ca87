"""The proposal hold for a round's batch, off and on: the ledger's phases of a 4-node round.

``consensus/ledger/batching.py`` lets a proposer hold its proposal (``batch_wait_s``) until the rest
of a round's check-ins or ``Merged`` reports has arrived. This bench copies the working tree
twice (``swarmlearn``, ``bench``, ``tests``), sets ``batch_wait_s = 0`` in one copy, and runs
``bench/round.py``'s 4-daemon round from each copy in turn, back to back, pooling every
round's ``closed`` and ``done`` phases (see bench/round.py's PHASES). A round that fails for
a reason outside the ledger is counted and left out.

    python bench/ledger_hold.py [--quick] [--pairs N]

--quick: 1 MB, 5 rounds, two pairs (under 30 s). Default: 1 MB (11 rounds) and 100 MB
(5 rounds), 3 pairs each; pairs alternate their order (off-on, on-off). The machine's load
moves the figures a lot: compare the on/off ratios of one run, and rerun on a quiet machine.
Measured 2026-11-26, ``--pairs 4``, load 6-6.6 on 2 cores: 1 MB (44 rounds each) closed
0.055 -> 0.046 s, done 0.040 -> 0.034 s; 100 MB (20 rounds each) closed 0.071 -> 0.068 s,
done 0.042 -> 0.030 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HOLD_LINE = "    batch_wait_s: float = "
MB = 1_000_000
RUN_TIMEOUT_S = 600
#: Runs bench/round.py's run_size in the tree it is started in; one JSON line of phases.
RUNNER = """
import importlib.util, json, sys
sys.path.insert(0, ".")
spec = importlib.util.spec_from_file_location("bench_round", "bench/round.py")
m = importlib.util.module_from_spec(spec); sys.modules["bench_round"] = m
spec.loader.exec_module(m)
ok, failed = [], []
real = m._one_round
def one(*args):
    try:
        result = real(*args)
    except RuntimeError as error:
        failed.append(str(error))
        return 0.0, {name: 0.0 for name in m.PHASES}
    ok.append(result[1])
    return result
m._one_round = one
m.run_size(4, int(sys.argv[1]), int(sys.argv[2]))
print(json.dumps({"phases": ok, "failed": failed}))
"""


def make_tree(dest: Path, hold: bool) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "results", "*.pyc")
    for name in ("swarmlearn", "bench", "tests"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    if not hold:
        core = dest / "swarmlearn" / "consensus" / "core.py"
        lines = core.read_text().splitlines(keepends=True)
        found = [i for i, line in enumerate(lines) if line.startswith(HOLD_LINE)]
        if len(found) != 1:
            raise SystemExit(f"{core}: no single '{HOLD_LINE.strip()}' line to turn the hold off")
        lines[found[0]] = f"{HOLD_LINE}0.0\n"
        core.write_text("".join(lines))


def run_tree(tree: Path, model_bytes: int, rounds: int) -> tuple[list[dict[str, float]], int]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, str(model_bytes), str(rounds)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"a run in {tree} failed:\n{done.stderr[-2000:]}")
    found = json.loads(lines[-1])
    return found["phases"], len(found["failed"])


def measure(trees: dict[str, Path], model_bytes: int, rounds: int, pairs: int) -> dict[str, float]:
    phases: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    failed = 0
    for pair in range(pairs):  # off-on, on-off, ...: the order of a pair is no bias
        for name in ("off", "on") if pair % 2 == 0 else ("on", "off"):
            got, lost = run_tree(trees[name], model_bytes, rounds)
            phases[name] += got
            failed += lost
    figures: dict[str, float] = {"failed_rounds": failed}
    for name, runs in phases.items():
        figures[f"rounds_{name}"] = len(runs)
        for phase in ("closed", "done"):
            values = [run[phase] for run in runs]
            figures[f"{phase}_{name}_s"] = round(statistics.median(values), 4) if values else -1
    for phase in ("closed", "done"):
        off, on = figures[f"{phase}_off_s"], figures[f"{phase}_on_s"]
        figures[f"{phase}_on_vs_off"] = round(on / off, 3) if off > 0 else -1
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 MB, 5 rounds, two pairs")
    parser.add_argument("--pairs", type=int, default=0, help="off/on pairs per size (default 3)")
    args = parser.parse_args()
    sizes = [(1, 5)] if args.quick else [(1, 11), (100, 5)]
    pairs = args.pairs or (2 if args.quick else 3)
    figures: dict[str, object] = {"load_1min": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"off": Path(tmp) / "off", "on": Path(tmp) / "on"}
        for name, tree in trees.items():
            make_tree(tree, hold=name == "on")
        for size_mb, rounds in sizes:
            result = measure(trees, size_mb * MB, rounds, pairs)
            figures[f"{size_mb}MB"] = result
            print(f"{size_mb} MB: {result}", flush=True)
    targets = {"1MB.closed_on_vs_off": "<= 0.9", "done_on_vs_off (every size)": "<= 1.0"}
    small = figures["1MB"]
    assert isinstance(small, dict)
    met = small["closed_on_vs_off"] <= 0.9 and all(
        isinstance(v, dict) and v["done_on_vs_off"] <= 1.0
        for k, v in figures.items()
        if k.endswith("MB")
    )
    print(json.dumps({"figures": figures, "targets": targets, "met": bool(met)}))


if __name__ == "__main__":
    main()
