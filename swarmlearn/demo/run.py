"""``swarmlearn demo``: a whole swarm on this machine, from certificates to a results table.

1. a workspace with a CA and a certificate per node (``LocalSwarm``);
2. a sentinel and ``nodes - 1`` more ``swarm-node`` processes on loopback, real mutual TLS;
3. one training process per node (``swarmlearn.demo.trainer``: PyTorch + ``SwarmCallback``) on
   its label-skewed share of sklearn's digits; their JSON events become live progress lines,
   one per round once every node has merged it;
4. for comparison, in this process: each node's model trained alone on its share, and one
   model trained on all the data, the same steps per round;
5. a table (swarm vs alone vs all data), a PNG plot of accuracy per round, optionally JSON.

Every process it started is stopped at the end, also on Ctrl-C — unless ``--keep``, which
leaves the swarm running (for SWCI or the dashboard) and says how to stop it.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarmlearn.errors import ConfigError

MARKER = ".swarmlearn-demo"
QUIET_TIMEOUT_S = 180.0  # no event from any trainer for this long: something is stuck
FRAMEWORKS = {"torch": "torch", "keras": "tensorflow"}  # and the module each needs


@dataclass
class Progress:
    """What the trainers have said so far."""

    nodes: int
    shares: dict[int, dict[str, Any]] = field(default_factory=dict)
    rounds: dict[int, dict[int, dict[str, Any]]] = field(default_factory=dict)  # round -> node
    done: dict[int, dict[str, Any]] = field(default_factory=dict)
    printed: set[int] = field(default_factory=set)

    def take(self, event: dict[str, Any]) -> list[str]:
        """Record one event; the progress lines it completes."""
        node = int(event["node"])
        if event["event"] == "start":
            self.shares[node] = event
            lacks = " ".join(map(str, event["missing"])) or "nothing"
            return [f"  n{node}: {event['samples']} samples, lacks digits {lacks}"]
        if event["event"] == "done":
            self.done[node] = event
            return []
        number = int(event["round"])
        self.rounds.setdefault(number, {})[node] = event
        if len(self.rounds[number]) < self.nodes or number in self.printed:
            return []
        self.printed.add(number)
        return [self.round_line(number)]

    def round_line(self, number: int) -> str:
        seen = self.rounds[number]
        nodes = " ".join(f"n{n} e{seen[n]['epoch']} {seen[n]['peers']}p" for n in sorted(seen))
        hashes = {e["hash"] for e in seen.values()}
        same = "" if len(hashes) == 1 else f" ({len(hashes)} DIFFERENT hashes)"
        merge_s = max(e["merge_s"] for e in seen.values())
        accuracy = seen[min(seen)]["accuracy"]
        return (
            f"round {number:>3}  {nodes}  merged in {merge_s:.2f} s"
            f"  hash {next(iter(sorted(hashes)))[:12]}{same}  accuracy {accuracy:.3f}"
        )

    def curve(self, node: int) -> list[tuple[int, float]]:
        """(epochs trained, accuracy of the merged model) for each round ``node`` merged."""
        points: dict[int, float] = {}
        for number in sorted(self.rounds):
            event = self.rounds[number].get(node)
            if event is not None:
                points[int(event["epoch"])] = float(event["accuracy"])
        return sorted(points.items())


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nodes", type=int, default=4, help="swarm nodes, the sentinel included (default 4)"
    )
    parser.add_argument("--rounds", type=int, default=10, help="sync rounds (default 10)")
    parser.add_argument(
        "--epochs-per-round", type=int, default=1, help="local epochs between syncs (default 1)"
    )
    parser.add_argument("--framework", default="torch", help="torch (default) or keras")
    parser.add_argument("--merge-method", default="mean", help="mean (default), coordmedian, ...")
    parser.add_argument(
        "--workdir", type=Path, default=Path("demo-run"), help="workspace (default ./demo-run)"
    )
    parser.add_argument("--plot", type=Path, help="PNG plot path (default WORKDIR/accuracy.png)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    parser.add_argument(
        "--keep", action="store_true", help="leave the swarm running at the end (for SWCI)"
    )


def check_arguments(args: argparse.Namespace) -> None:
    from swarmlearn.merge import round_method_problem

    if args.nodes < 2:
        raise ConfigError(f"--nodes must be at least 2 (a swarm), got {args.nodes}")
    if args.rounds < 1:
        raise ConfigError(f"--rounds must be at least 1, got {args.rounds}")
    if args.epochs_per_round < 1:
        raise ConfigError(f"--epochs-per-round must be at least 1, got {args.epochs_per_round}")
    if args.framework not in FRAMEWORKS:
        raise ConfigError(
            f"--framework must be one of: {', '.join(FRAMEWORKS)}; got {args.framework!r}"
        )
    if problem := round_method_problem(args.merge_method):
        raise ConfigError(f"--merge-method: {problem}")
    for module, extra in ((FRAMEWORKS[args.framework], args.framework), ("sklearn", "dev")):
        try:
            __import__(module)
        except ImportError:
            raise ConfigError(
                f"the demo needs {module}: pip install -e '.[{extra}]' (or run make demo)"
            ) from None


def fresh_workdir(path: Path) -> None:
    """An empty workspace; an old demo workspace is cleared, anything else is refused."""
    if path.exists() and any(path.iterdir()):
        if not (path / MARKER).exists():
            raise ConfigError(
                f"--workdir {path}: exists and is not a demo workspace; give an empty or new one"
            )
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text("made by swarmlearn demo; removed by the next run\n")


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    from swarmlearn.demo.swarm import LocalSwarm

    fresh_workdir(args.workdir)
    started = time.monotonic()
    print(
        f"swarmlearn demo: {args.nodes} nodes, {args.rounds} rounds of {args.epochs_per_round}"
        f" epoch(s), {args.framework}, merge {args.merge_method}; workspace {args.workdir}",
        flush=True,
    )
    swarm = LocalSwarm(args.workdir, args.nodes)
    trainers: list[subprocess.Popen[bytes]] = []
    keep = False
    try:
        swarm.start()
        for node in swarm.nodes:
            print(f"  {node.name} api https://127.0.0.1:{node.api_port}  data {node.data_dir}")
        startup_s = time.monotonic() - started
        print(f"  swarm formed: {args.nodes} validators in {startup_s:.1f} s", flush=True)
        train_started = time.monotonic()
        progress = Progress(args.nodes)
        events: queue.Queue[tuple[int, str]] = queue.Queue()
        for index, node in enumerate(swarm.nodes):
            trainers.append(_start_trainer(args, index, node.socket, node.data_dir, events))
        _follow(progress, trainers, events, args)
        train_s = time.monotonic() - train_started
        keep = args.keep
    finally:
        for process in trainers:
            _stop(process)
        if not keep:
            swarm.stop()
    results = _compare(args, progress, startup_s, train_s, time.monotonic() - started)
    _print_table(results, progress)
    plot = args.plot or args.workdir / "accuracy.png"
    if _plot(results, plot):
        print(f"plot: {plot}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results: {args.json}")
    if keep:
        _print_keep(args, swarm)
    return 0 if results["identical"] else 1


def _start_trainer(
    args: argparse.Namespace,
    index: int,
    socket: Path,
    data_dir: Path,
    events: queue.Queue[tuple[int, str]],
) -> subprocess.Popen[bytes]:
    from swarmlearn.demo.swarm import record_pid

    command = [
        sys.executable,
        "-m",
        "swarmlearn.demo.trainer" if args.framework == "torch" else "swarmlearn.demo.trainer_keras",
        f"--node={index}",
        f"--nodes={args.nodes}",
        f"--rounds={args.rounds}",
        f"--epochs-per-round={args.epochs_per_round}",
        f"--merge-method={args.merge_method}",
        f"--socket={socket}",
    ]
    with (data_dir / "trainer.log").open("ab") as log:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"},
            start_new_session=True,
        )
    record_pid(args.workdir, f"trainer-n{index}", process.pid)

    def pump() -> None:
        assert process.stdout is not None
        with process.stdout:
            for raw in process.stdout:
                events.put((index, raw.decode(errors="replace")))
        events.put((index, ""))

    threading.Thread(target=pump, daemon=True).start()
    return process


def _follow(
    progress: Progress,
    trainers: list[subprocess.Popen[bytes]],
    events: queue.Queue[tuple[int, str]],
    args: argparse.Namespace,
) -> None:
    """Print progress until every trainer is done; a trainer that fails or goes quiet ends
    the demo with the reason."""
    ended: set[int] = set()
    while len(ended) < len(trainers):
        try:
            index, line = events.get(timeout=QUIET_TIMEOUT_S)
        except queue.Empty:
            raise ConfigError(
                f"no progress from any trainer in {QUIET_TIMEOUT_S:g} s"
                f" (see {args.workdir}/n*/trainer.log and node.log)"
            ) from None
        if line == "":
            ended.add(index)
            status = trainers[index].wait()
            if status != 0 or index not in progress.done:
                log = args.workdir / f"n{index}" / "trainer.log"
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(empty)"]
                raise ConfigError(f"trainer n{index} failed (exit {status}): {tail[0]} (see {log})")
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # a stray line from a library: not an event
        for text in progress.take(event):
            print(text, flush=True)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _compare(
    args: argparse.Namespace, progress: Progress, startup_s: float, train_s: float, wall_s: float
) -> dict[str, Any]:
    """The local-only and all-data models, trained here with the same steps per round."""
    from swarmlearn.demo import digits

    if args.framework == "keras":
        from swarmlearn.demo import digits_keras

        train_alone = digits_keras.train_alone
    else:
        train_alone = digits.train_alone
    x_train, y_train, x_test, y_test = digits.dataset()
    shares = digits.split(x_train, y_train, args.nodes)
    steps = digits.steps_per_round(shares, args.epochs_per_round)
    alone = [
        train_alone(share, args.rounds, steps, x_test, y_test, seed=i)
        for i, share in enumerate(shares)
    ]
    everything = digits.split(x_train, y_train, 1)[0]
    central = train_alone(everything, args.rounds, steps * args.nodes, x_test, y_test, seed=0)
    final_hashes = sorted({e["hash"] for e in progress.done.values()})
    return {
        "nodes": args.nodes,
        "rounds": args.rounds,
        "epochs_per_round": args.epochs_per_round,
        "framework": args.framework,
        "merge_method": args.merge_method,
        "wall_s": round(wall_s, 2),
        "startup_s": round(startup_s, 2),
        "train_s": round(train_s, 2),
        "rounds_merged": max((e["rounds"] for e in progress.done.values()), default=0),
        "merged_hash": final_hashes[0] if len(final_hashes) == 1 else None,
        "identical": len(final_hashes) == 1,
        "swarm_accuracy": {f"n{n}": progress.done[n]["accuracy"] for n in sorted(progress.done)},
        "alone_accuracy": {f"n{n}": curve[-1] for n, curve in enumerate(alone)},
        "central_accuracy": central[-1],
        "curves": {
            "epochs": [args.epochs_per_round * (r + 1) for r in range(args.rounds)],
            "swarm": progress.curve(0),
            "alone": {f"n{n}": curve for n, curve in enumerate(alone)},
            "central": central,
        },
    }


def _print_table(results: dict[str, Any], progress: Progress) -> None:
    print()
    print(f"{'node':6}{'samples':>8}  {'lacks digits':14}{'alone':>7}{'swarm':>8}")
    for name, swarm in results["swarm_accuracy"].items():
        share = progress.shares[int(name[1:])]
        lacks = " ".join(map(str, share["missing"])) or "-"
        alone = results["alone_accuracy"][name]
        print(f"{name:6}{share['samples']:>8}  {lacks:14}{alone:>7.3f}{swarm:>8.3f}")
    print(f"{'all data, one model':36}{results['central_accuracy']:>8.3f}")
    same = "identical on every node" if results["identical"] else "NOT identical"
    print(
        f"swarm model: {same}, {results['rounds_merged']} rounds merged, hash"
        f" {str(results['merged_hash'])[:16]}; {results['train_s']:.1f} s training,"
        f" {results['wall_s']:.1f} s in all"
    )


def _plot(results: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plot: matplotlib is not installed (pip install -e '.[demo]')")
        return False
    curves = results["curves"]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    swarm = curves["swarm"]
    axes.plot(
        [e for e, _ in swarm], [a for _, a in swarm], "o-", lw=2.5, label="swarm (every node)"
    )
    for name, curve in curves["alone"].items():
        axes.plot(curves["epochs"], curve, "--", alpha=0.8, label=f"{name} alone")
    axes.plot(curves["epochs"], curves["central"], ":", color="black", label="all data, one model")
    axes.set_xlabel("epochs trained")
    axes.set_ylabel("test accuracy")
    axes.set_ylim(0, 1)
    axes.set_title(f"digits, {results['nodes']} nodes with label skew")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def _print_keep(args: argparse.Namespace, swarm: Any) -> None:
    pids = " ".join(str(node.process.pid) for node in swarm.nodes)
    first = swarm.nodes[0]
    pki = args.workdir / "pki"
    print(f"\nthe swarm keeps running (--keep): node API https://127.0.0.1:{first.api_port}")
    print(
        f"  operator identity: --cert {pki}/operator.pem --key {pki}/operator-key.pem"
        f" --cacert {pki}/ca.pem"
    )
    print(f"  stop it with: kill {pids}")
