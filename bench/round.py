"""A sync round end to end: N swarm-node daemons on loopback merge a 100 MB float32 model.

Each daemon is a real process (ledger + SL) with mutual TLS; a trainer thread per node hands
the weights over the node's local endpoint, as a training script would. Figures, per size:

- round wall time from the last contribution handed over to every trainer holding the merged
  weights (check-ins committed, reduce-scatter, merge, all-gather, agreement on the ledger);
- peak RSS of each daemon (VmHWM), as a multiple of the model size, and the same less the
  daemon's RSS when idle before the first round (the interpreter: what the rounds cost);
- the ceiling: a blocking ``ssl.SSLSocket`` pair on the same loopback (bench/transport.py).

    python bench/round.py [--quick] [--rounds N] [--methods [a,b,...]]

``--methods`` (all of the round's merge methods when given no list) also times rounds of each
method at 4 nodes, in the same swarm after the mean's rounds, on seeded random weights (the
mean's own rounds use constant ones): ``round_4_nodes_method_s`` per method, beside ``mean``,
and each as a multiple of the mean's, and the geometric median's Weiszfeld updates
(``round_4_nodes_geomedian_iterations``). They are reported, not judged (no target).
``--quick --methods`` at load 11-13 on the shared 2 cores, 20 MB, one round each: mean
1.83 s, multikrum 1.26, krum 2.10, trimmedmean 2.64, coordmedian 2.98, geomedian 4.05 s
(7 updates); 55 s in all (``--quick`` alone: 42 s at load 12); at load 5-12, 34 s in all.
Full size, ``--rounds 1 --methods``, load 11-16: mean 4.01 s, krum 3.97, multikrum 5.00,
coordmedian 9.34, trimmedmean 10.11, geomedian 11.27 s (6 updates), 1.5 min in all.

Targets (the rounds issue): 4 nodes in <= 1.0 s for 100 MB, peak RSS <= 2x the model at 2 and
at 4 nodes. These are reported honestly, met or not. ``--quick`` (20 MB) judges the same
targets as they hold at its size (``_quick_judgement``): the 4-node round within the 100 MB
target, and the peak RSS above the daemon's idle RSS within 2x the model plus the lanes' frames
in flight. ``round_N_nodes_phases_s``
splits the round (PHASES below).

Issue 7 (the merged model assembled in the trainer's handover file), 100 MB, medians of 3
rounds, back to back with the previous commit (047835d) on the same 2 cores, load average 6 to
11 from other engineers' jobs, two pairs of runs:

    ===========================  ===============  ===============
    peak RSS / model             before           after
    ===========================  ===============  ===============
    2 nodes                      2.99x, 2.91x     2.43x, 2.43x
    4 nodes                      3.38x, 3.29x     2.87x, 2.73x
    4 nodes, above idle          2.68x, 2.59x     2.16x, 2.02x
    ===========================  ===============  ===============

At load 3.5: 2.37x and 2.43x. Still above the 2x target: the interpreter (0.7x), the handover
file (1x), the owner's range merged apart (1/N: it must not touch the contribution while a
new attempt may still need it) and chunks held for their turn in the fixed-order merge (up
to 0.5x per node under load, when one sender lags the others) with those in flight.

Then the trainer refills its handover file when a new attempt needs its weights (issue 7),
so the owner's range is merged in place in the file too (its own chunks copied just before
a fold writes over them). 100 MB, medians of 3 rounds, before (bf378ca) and after back to
back, twice, load average 3.4 to 8.3:

    ===========================  ===============  ===============
    peak RSS / model             before           after
    ===========================  ===============  ===============
    2 nodes                      2.42x, 2.56x     1.95x, 2.00x
    4 nodes                      3.00x, 2.77x     2.44x, 2.39x
    4 nodes, above idle          2.29x, 2.06x     1.73x, 1.69x
    ===========================  ===============  ===============

Met at 2 nodes; at 4, above 2x by the chunks held for their turn and those in flight.

Then a per-sender budget on the round lanes counting the chunks the merge holds for their
turn (docs/held-chunks.md), BLAKE3 chunk hashes and the ledger's proposal hold. Quiet machine
(load 0.2-1.1), ``--rounds 5``, two runs: 2 nodes 0.278 / 0.305 s, 4 nodes 0.693 / 0.771 s
(from the last check-in 0.539 / 0.562 s); peak RSS 1.95x / 1.96x at 2 nodes, 2.31x / 2.36x
at 4 (the allocator's per-thread arenas keep 0.2-0.3x). 4-node phases: handed 0.17, closed
0.04-0.05, exchanged 0.48-0.49, done 0.02 s.

Then the node sheds the handover file's pages once hashed, sent or written (``MADV_DONTNEED``
on its shared mapping; ``MADV_POPULATE_READ`` before reading a chunk). Quiet machine, several
runs of ``--rounds 5``: peak RSS 1.49-1.54x at 2 nodes, 1.69-1.82x at 4 (target 2x: met);
4 nodes 0.72-0.86 s per round, 0.61-0.64 s from the last check-in; met=true.

Measured 2026-11-26, full size, medians of 5 rounds. On the 2-core development machine at a
quiet moment (load average 1.5-2 from other jobs), before and after back to back:

    =========================  ====================  ====================
    100 MB                     before (round data    after (round lanes,
                               on the trio message   no copies, hashes
                               connections)          in threads)
    =========================  ====================  ====================
    2 nodes                    0.66 s                0.44-0.47 s
    4 nodes                    1.24 s                0.90-1.00 s
    peak RSS / model, 2 nodes  12.5x                 2.9x
    peak RSS / model, 4 nodes  11.6x                 3.2-3.3x
    =========================  ====================  ====================

4 nodes, after: handed 0.15-0.20 s (the four trainers of this one process copy their weights
into shared memory under one GIL, then each node hashes them in threads), closed 0.14 s (the
check-ins' block), exchanged 0.57-0.59 s (reduce-scatter, merge, all-gather: 600 MB through
TLS, every chunk hashed, in 4 daemons sharing 2 cores), done 0.04 s (the Merged block).
Before: closed 0.35 s, exchanged 0.85 s. Peak RSS after: the interpreter (0.7x), the
trainer's handover file mapped by the node (1x, shared with the trainer: not a copy), the
merged model being assembled (1x), chunks in flight (bounded by the lanes' receive budget).
Under the heavy load of a shared machine every figure is several times worse.

On a 16-core Xeon device host (an earlier state of this work: lanes, no copies, before the
receive budget and the lane-thread fix), before and after in the same call: pinned to 2
cores (``taskset -c 0,1``) 4 nodes 2.24 -> 1.44 s, 2 nodes 1.19 -> 0.80 s; unpinned 4 nodes
1.59 -> 0.59 s; peak RSS 11.6x -> 4.2x.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import trio

from swarmlearn.consensus.ledger.app import DEFAULT_CONTRACT
from swarmlearn.merge import ModelState, flatten, layout_of
from swarmlearn.merge.manifest import Layout
from swarmlearn.merge.methods import ROUND_METHODS, round_method_problem
from swarmlearn.p2p.bulk_push import INFLIGHT_BYTES_MAX
from swarmlearn.p2p.certs import create_ca, issue_certificate
from swarmlearn.p2p.identity import IdentityPaths, Role, load_identity
from swarmlearn.roles.api.messages import NodeStatus, StatusRequest
from swarmlearn.roles.local.endpoint import LocalClient
from swarmlearn.roles.node.node import ask

HERE = Path(__file__).resolve().parent
MB = 1_000_000
#: Where a round's time goes, from the progress lines each node sends its trainer: every node
#: holding its trainer's weights, hashed, and signing its check-in ("checking in"); the last
#: check-in committed and the round closed ("exchanging"); every participant holding the
#: merged model ("merged"); the ledger's agreement delivered to every trainer ("done").
PHASES = {
    "handed": "checking in",
    "closed": "exchanging with",
    "exchanged": "merged, root",
    "done": "",
}


def _load_transport_bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_transport", HERE / "transport.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: Flags every daemon gets (``--lane-port``: the round lanes' own port, or ``none``).
DAEMON_FLAGS: list[str] = []


def _daemon(stack: ExitStack, pki: Path, name: str, data: Path, *flags: str) -> tuple[Any, int]:
    sys.path.insert(0, str(HERE.parent))
    from tests.test_real_swarm import node_process  # the same launcher the tests use

    return stack.enter_context(node_process(pki, name, data, *flags, *DAEMON_FLAGS))


def _status_bytes(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


def _peak_rss_bytes(pid: int) -> int:
    return _status_bytes(pid, "VmHWM")


@dataclass(frozen=True)
class SizeFigures:
    round_s: float  # median
    runs_s: list[float]
    peak_rss_vs_model: float
    phases_s: dict[str, float]  # median of each phase (PHASES)
    #: the peak less the daemon's RSS when idle before the first round (the interpreter and
    #: its libraries), as a multiple of the model: what the rounds themselves cost
    peak_above_idle_vs_model: float
    #: median of each run's time from the last check-in ("checking in") to the last trainer
    #: holding the merged weights: issue 7's definition, without the trainers' hashing
    from_checkin_s: float = 0.0


def run_size(
    nodes: int,
    model_bytes: int,
    rounds: int,
    methods: tuple[str, ...] = (),
    method_rounds: int = 1,
) -> tuple[SizeFigures, dict[str, list[float]]]:
    floats = model_bytes // 4
    layout = layout_of(ModelState({"w": np.zeros(floats, np.float32)}))
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        root = Path(tmp)
        ca = create_ca(root / "pki")
        for index in range(nodes):
            issue_certificate(
                ca, f"sn{index}", root / "pki", hosts=["127.0.0.1"], roles=[Role.SN, Role.SL]
            )
        pki = root / "pki"
        processes, ports = [], []
        process, port = _daemon(
            stack, pki, "sn0", root / "n0", "--sentinel", "--listen", "127.0.0.1:0"
        )
        processes.append(process)
        ports.append(port)
        for index in range(1, nodes):
            join = ("--bootstrap", f"127.0.0.1:{ports[0]}", "--listen", "127.0.0.1:0")
            process, port = _daemon(stack, pki, f"sn{index}", root / f"n{index}", *join)
            processes.append(process)
            ports.append(port)
        client = load_identity(IdentityPaths(pki / "sn0.pem", pki / "sn0-key.pem", pki / "ca.pem"))
        trio.run(_wait_validators, client, ports, nodes)
        idle = [_status_bytes(p.pid, "VmRSS") for p in processes]
        runs = [_one_round(root, nodes, layout, number) for number in range(1, rounds + 1)]
        rss = [_peak_rss_bytes(p.pid) for p in processes]
        per_method = _method_rounds(root, nodes, layout, method_rounds, methods)
    times = [total for total, _ in runs]
    phases = {name: statistics.median(steps[name] for _, steps in runs) for name in PHASES}
    above = max(peak - before for peak, before in zip(rss, idle, strict=True))
    from_checkin = statistics.median(total - steps["handed"] for total, steps in runs)
    figures = SizeFigures(
        statistics.median(times),
        times,
        max(rss) / model_bytes,
        phases,
        above / model_bytes,
        from_checkin,
    )
    return figures, per_method


def _method_rounds(
    root: Path, nodes: int, layout: Layout, rounds: int, methods: tuple[str, ...]
) -> dict[str, list[float]]:
    """Round times of each method, on seeded random weights (the same for every method)."""
    if not methods:
        return {}
    shape = layout.tensors[0].shape
    flats = [
        bytes(flatten(ModelState({"w": _random_weights(shape, i)}), layout)) for i in range(nodes)
    ]
    times: dict[str, list[float]] = {}
    for method in methods:
        for _ in range(rounds):
            total, steps = _one_round(root, nodes, layout, 0, method, flats)
            times.setdefault(method, []).append(total)
            if "iterations" in steps:
                times.setdefault(f"{method} iterations", []).append(steps["iterations"])
    return times


def _random_weights(shape: tuple[int, ...], seed: int) -> Any:
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape, dtype=np.float32)


async def _wait_validators(client: Any, ports: list[int], nodes: int) -> None:
    with trio.fail_after(120):
        while True:
            found = [await ask(client, "127.0.0.1", p, StatusRequest(), NodeStatus) for p in ports]
            if all(len(s.validators) == nodes for s in found):
                return
            await trio.sleep(0.05)


def _one_round(
    root: Path,
    nodes: int,
    layout: Layout,
    number: int,
    method: str = "mean",
    weights: list[bytes] | None = None,
) -> tuple[float, dict[str, float]]:
    flats = weights or [
        bytes(
            flatten(
                ModelState({"w": np.full(layout.tensors[0].shape, i + number, np.float32)}), layout
            )
        )
        for i in range(nodes)
    ]
    handed: list[float] = []
    seen: dict[str, list[float]] = {phase: [] for phase in PHASES}
    lock = threading.Lock()

    def progress(text: str) -> None:
        if " iterations, " in text:  # "round 3: geomedian over 4: 21 iterations, converged"
            seen.setdefault("iterations", []).append(float(text.split(": ")[-1].split()[0]))
        if " past its deadline" in text:  # "round 1: attempt 1 past its deadline ..."
            failed = float(text.split(": attempt ", 1)[1].split()[0])
            with lock:
                seen.setdefault("attempts", []).append(failed + 1)
        for phase, words in PHASES.items():
            if words and words in text:
                with lock:
                    seen[phase].append(time.perf_counter())

    def train(index: int) -> float:
        with LocalClient(
            root / f"n{index}" / "sl.sock", timeout_s=300, on_progress=progress
        ) as local:
            with lock:
                handed.append(time.perf_counter())
            outcome = local.sync_round(
                DEFAULT_CONTRACT, layout, flats[index], min_peers=nodes, merge_method=method
            )
            if outcome.merged is None:
                raise RuntimeError(f"round failed: {outcome.reason}")
            done = time.perf_counter()
            with lock:
                seen["done"].append(done)
            return done

    with ThreadPoolExecutor(nodes) as pool:
        list(pool.map(train, range(nodes)))
    marks = [max(handed)] + [max(seen[phase], default=max(handed)) for phase in PHASES]
    steps = {phase: marks[i + 1] - marks[i] for i, phase in enumerate(PHASES)}
    if seen.get("iterations"):  # the geometric median's Weiszfeld updates (every node alike)
        steps["iterations"] = max(seen["iterations"])
    # A round whose first attempt passed its deadline ran a second one: its "closed" phase
    # then holds the whole first attempt, and "exchanged" the second attempt's exchange.
    steps["attempts"] = max(seen.get("attempts", [1.0]))
    return marks[-1] - marks[0], steps


def _method_figures(
    figures: dict[str, Any], nodes: int, per_method: dict[str, list[float]]
) -> None:
    """Each method's median round time, and as a multiple of the mean's (same weights)."""
    if not per_method:
        return
    medians = {method: statistics.median(times) for method, times in per_method.items()}
    base = medians.get("mean")
    for method, median in medians.items():
        name = method.split(":")[0]
        if method.endswith(" iterations"):
            figures[f"round_{nodes}_nodes_{name.split()[0]}_iterations"] = int(median)
            continue
        figures[f"round_{nodes}_nodes_{name}_s"] = round(median, 3)
        if base:
            figures[f"round_{nodes}_nodes_{name}_vs_mean"] = round(median / base, 2)
        print(f"{nodes} nodes, {method}: {median:.3f} s per round", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 MB, 2 rounds")
    parser.add_argument("--rounds", type=int, default=0, help="rounds per size (default 3)")
    parser.add_argument(
        "--methods",
        nargs="?",
        const=",".join(ROUND_METHODS),
        default="",
        help="also time rounds of these merge methods at 4 nodes (default: all of them)",
    )
    parser.add_argument(
        "--lane-port",
        default="0",
        help="the daemons' --lane-port (default 0: a port of their own; none: the --listen port)",
    )
    args = parser.parse_args()
    DAEMON_FLAGS[:] = ["--lane-port", args.lane_port]
    methods = tuple(m for m in args.methods.split(",") if m)
    for method in methods:
        if problem := round_method_problem(method):
            parser.error(f"--methods: {problem}")
    model_bytes = (20 if args.quick else 100) * MB
    rounds = args.rounds or (2 if args.quick else 3)
    transport = _load_transport_bench()
    with tempfile.TemporaryDirectory() as tmp:
        receiver, sender_paths = transport.make_pki(Path(tmp))
        sender = load_identity(sender_paths)
        ceiling = transport.measure_throughput("socket", receiver, sender, 256 * 1024 * 1024)
    figures: dict[str, Any] = {
        "model_MB": model_bytes // MB,
        "tls_socket_ceiling_GBps": round(ceiling / 1e9, 3),
    }
    for nodes in (2, 4):
        result, per_method = run_size(
            nodes, model_bytes, rounds, methods if nodes == 4 else (), 1 if args.quick else rounds
        )
        figures[f"round_{nodes}_nodes_s"] = round(result.round_s, 3)
        figures[f"round_{nodes}_nodes_runs_s"] = [round(t, 3) for t in result.runs_s]
        figures[f"round_{nodes}_nodes_from_checkin_s"] = round(result.from_checkin_s, 3)
        figures[f"peak_rss_{nodes}_nodes_vs_model"] = round(result.peak_rss_vs_model, 2)
        figures[f"peak_rss_{nodes}_nodes_above_idle_vs_model"] = round(
            result.peak_above_idle_vs_model, 2
        )
        figures[f"round_{nodes}_nodes_phases_s"] = {
            name: round(value, 3) for name, value in result.phases_s.items()
        }
        print(f"{nodes} nodes: {figures[f'round_{nodes}_nodes_s']} s per round", flush=True)
        _method_figures(figures, nodes, per_method)
    targets, met = (_quick_judgement if args.quick else _full_judgement)(figures, model_bytes)
    print(json.dumps({"figures": figures, "targets": targets, "met": met}))


def _full_judgement(figures: dict[str, Any], model_bytes: int) -> tuple[dict[str, str], bool]:
    """The rounds issue's targets, for a 100 MB model, at every size of swarm measured."""
    targets = {
        "round_4_nodes_s": "<= 1.0 (100 MB)",
        "peak_rss_2_nodes_vs_model": "<= 2 (100 MB)",
        "peak_rss_4_nodes_vs_model": "<= 2 (100 MB)",
    }
    met = (
        figures["round_4_nodes_s"] <= 1.0
        and figures["peak_rss_2_nodes_vs_model"] <= 2
        and figures["peak_rss_4_nodes_vs_model"] <= 2
    )
    return targets, met


def _quick_judgement(figures: dict[str, Any], model_bytes: int) -> tuple[dict[str, str], bool]:
    """The same targets, as they hold at --quick's 20 MB.

    Time: a 20 MB round is held to the 100 MB target itself: it may not take longer than a
    model five times its size is allowed to. (Scaling the target down would assume a round
    grows linearly with the model; at 20 MB it does not: connection and pipeline start-up
    are most of the exchange, 0.37 s of a 0.56 s 4-node round at 20 MB against 0.55 s of
    0.72-0.86 s at 100 MB.)
    Memory: at 20 MB a daemon's interpreter alone is several times the model, so the peak
    above the daemon's idle RSS (what the rounds cost) is held to 2x the model plus what
    does not shrink with the model: the round lanes' frames in flight
    (``lanes.INFLIGHT_BYTES_MAX``, 32 MiB).
    """
    allowance = 2 + INFLIGHT_BYTES_MAX / model_bytes
    targets = {
        "round_4_nodes_s": "<= 1.0 (the 100 MB target)",
        "peak_rss_2_nodes_above_idle_vs_model": f"<= {allowance:.2f} (2 + lane frames in flight)",
        "peak_rss_4_nodes_above_idle_vs_model": f"<= {allowance:.2f} (2 + lane frames in flight)",
    }
    met = (
        figures["round_4_nodes_s"] <= 1.0
        and figures["peak_rss_2_nodes_above_idle_vs_model"] <= allowance
        and figures["peak_rss_4_nodes_above_idle_vs_model"] <= allowance
    )
    return targets, met


if __name__ == "__main__":
    main()
