"""What swarm training costs a training script, per sync, against the same script alone.

Two real swarm-node daemons on loopback (``LocalSwarm``, mutual TLS); two training processes
(this file with ``--worker``), each a PyTorch model of the given size trained with the
PyTorch ``SwarmCallback`` through its node's local socket. The same workers run again with
``SWARM_LOOPBACK=True`` (HPE's switch: no swarm at all). Figures, per model size (medians over
the syncs):

- ``interval_s``: wall time of ``syncFrequency`` training steps, alone and in the swarm; the
  overhead per sync is their difference;
- the sync split: ``handover_s`` (flatten the state, send it to the node over the Unix
  socket, read the merged weights back, unpack, load them into the model), ``node_s`` (the
  node's part: check-in on the ledger, exchange and merge among the peers) and, measured apart
  on the same sizes, ``merge_s`` (the mean kernel over two contributions) — ``exchange_s`` is
  ``node_s - merge_s``;
- target: handover <= 10% of the round (``handover_s / sync_s``).

    python bench/callback.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MB = 1_000_000
WIDTH = 1024  # a 1024 x 1024 float32 layer: 4.2 MB
HANDOVER_SHARE_MAX = 0.10
HANDOVER_PARTS = ("flatten_s", "send_s", "receive_s", "unpack_s", "load_s")


def model_of(size_mb: int) -> Any:
    """Square Linear layers (about 4 MB each, at least two) adding up to ``size_mb``."""
    import torch

    layers = max(2, round(size_mb * MB / (4 * WIDTH * WIDTH)))
    width = int((size_mb * MB / (4 * layers)) ** 0.5)
    torch.manual_seed(0)
    return torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])


def worker(args: argparse.Namespace) -> None:
    """One training process: ``--syncs`` intervals of ``--steps`` steps; JSON per interval."""
    import torch

    from swarmlearn.callback.pytorch import SwarmCallback

    torch.set_num_threads(1)
    model = model_of(args.size_mb)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    width = model[0].in_features
    batch = torch.randn(8, width, generator=torch.Generator().manual_seed(args.node))
    swarm = SwarmCallback(
        syncFrequency=args.steps,
        minPeers=2,
        model=model,
        nodeSocket=args.socket,
        logger=_quiet_logger(),
    )
    swarm.on_train_begin()
    for _ in range(args.syncs):
        started = time.perf_counter()
        for _ in range(args.steps):
            optimizer.zero_grad()
            model(batch).square().mean().backward()
            optimizer.step()
            swarm.on_batch_end()
        timing = swarm.last_timing
        print(
            json.dumps(
                {
                    "interval_s": time.perf_counter() - started,
                    "sync_s": swarm.last_round_s
                    + timing.flatten_s
                    + timing.unpack_s
                    + timing.load_s,
                    "handover_s": timing.handover_s,
                    "node_s": timing.node_s,
                    **{part: getattr(timing, part) for part in HANDOVER_PARTS},
                    "bytes": sum(p.numel() * p.element_size() for p in model.state_dict().values()),
                }
            ),
            flush=True,
        )
    swarm.on_train_end()


def _quiet_logger() -> Any:
    import logging

    logger = logging.getLogger("bench-callback")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger


def run_workers(
    size_mb: int, syncs: int, steps: int, sockets: list[Path], loopback: bool
) -> list[dict[str, float]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if loopback:
        env["SWARM_LOOPBACK"] = "True"
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                f"--node={node}",
                f"--size-mb={size_mb}",
                f"--syncs={syncs}",
                f"--steps={steps}",
                f"--socket={socket}",
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=HERE.parent,
        )
        for node, socket in enumerate(sockets)
    ]
    rows = []
    for process in processes:
        out, _ = process.communicate(timeout=600)
        if process.returncode != 0:
            raise RuntimeError(f"worker failed with status {process.returncode}")
        rows += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return rows


def merge_seconds(size_mb: int, repeats: int = 3) -> float:
    """The mean kernel over two contributions of this size, as the owners run it."""
    import numpy as np

    from swarmlearn.merge import merge_arrays

    count = size_mb * MB // 4
    contributions = [np.random.default_rng(i).random(count, dtype=np.float32) for i in range(2)]
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        merge_arrays(contributions, None, "mean")
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(size_mb: int, syncs: int, steps: int) -> dict[str, float]:
    from swarmlearn.demo.swarm import LocalSwarm

    with tempfile.TemporaryDirectory() as scratch, LocalSwarm(Path(scratch), 2) as swarm:
        sockets = [node.socket for node in swarm.nodes]
        alone = run_workers(size_mb, syncs, steps, sockets, loopback=True)
        together = run_workers(size_mb, syncs, steps, sockets, loopback=False)

    def median(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(row[key] for row in rows)

    merge_s = merge_seconds(size_mb)
    sync_s, handover_s, node_s = (median(together, k) for k in ("sync_s", "handover_s", "node_s"))
    return {
        "model_mb": round(together[0]["bytes"] / MB, 1),
        "alone_interval_s": round(median(alone, "interval_s"), 4),
        "swarm_interval_s": round(median(together, "interval_s"), 4),
        "overhead_per_sync_s": round(
            median(together, "interval_s") - median(alone, "interval_s"), 4
        ),
        "sync_s": round(sync_s, 4),
        "handover_s": round(handover_s, 4),
        "node_s": round(node_s, 4),
        "merge_s": round(merge_s, 4),
        "exchange_s": round(max(0.0, node_s - merge_s), 4),
        "handover_share": round(handover_s / sync_s, 4),
        **{f"handover_{part}": round(median(together, part), 4) for part in HANDOVER_PARTS},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller models, fewer syncs")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--node", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--size-mb", type=int, default=10, help=argparse.SUPPRESS)
    parser.add_argument("--syncs", type=int, default=5, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=5, help=argparse.SUPPRESS)
    parser.add_argument("--socket", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0
    sys.path.insert(0, str(HERE.parent))
    sizes, syncs = ((2, 10), 3) if args.quick else ((10, 100), 5)
    figures: dict[str, Any] = {}
    for size in sizes:
        found = measure(size, syncs, steps=5)
        print(f"{size} MB: {json.dumps(found)}", flush=True)
        figures.update({f"{key}_{size}mb": value for key, value in found.items()})
    targets = {f"handover_share_{size}mb": f"<= {HANDOVER_SHARE_MAX}" for size in sizes}
    met = all(figures[f"handover_share_{size}mb"] <= HANDOVER_SHARE_MAX for size in sizes)
    print(json.dumps({"figures": figures, "targets": targets, "met": met}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
