"""One hivemind peer for bench/hivemind.py, run with .venv-peers' python (``make bench-peers``).

The peer holds one float32 tensor in a ``DecentralizedAverager`` and obeys JSON lines on stdin,
answering with JSON lines on stdout, so the coordinator can line every peer up before it
times an all-reduce (the way hivemind's own Optimizer pre-schedules its rounds):

- it starts a DHT on loopback (joining ``--initial-peers``) and prints ``{"event": "up"}``;
- ``{"cmd": "round", "round": R}``: fill the tensor with ``index + R``, start a step that
  must wait for a trigger, and print ``{"event": "matched"}`` once the group is formed;
- ``{"cmd": "go"}``: allow the all-reduce, wait for it, and print ``{"event": "done"}`` with
  the monotonic times around it, whether hivemind reported success, and what the tensor holds
  now (SHA-256 and the fractions of elements equal to the full and the survivors' means);
- ``{"cmd": "quit"}``: shut down.

hivemind is imported by name at run time: bench/hivemind.py would shadow it for mypy.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import sys
import time
from typing import Any

import numpy as np
import torch

MATCHMAKING_TIMEOUT_S = 120.0
STAGE_POLL_S = 0.005


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def read_command() -> dict[str, Any]:
    line = sys.stdin.readline()
    if not line:
        return {"cmd": "quit"}
    command: dict[str, Any] = json.loads(line)
    return command


def summary(tensor: torch.Tensor, peers: int, survivors: list[int], fill: int) -> dict[str, Any]:
    """What the tensor holds after a round, against the means it could hold."""
    values = tensor.numpy()
    full_mean = np.float32(np.mean([i + fill for i in range(peers)]))
    survivor_mean = np.float32(np.mean([i + fill for i in survivors]))
    return {
        "sha256": hashlib.sha256(values.tobytes()).hexdigest(),
        "fraction_full_mean": float(np.mean(np.isclose(values, full_mean, atol=1e-4))),
        "fraction_survivor_mean": float(np.mean(np.isclose(values, survivor_mean, atol=1e-4))),
    }


def wait_matched(control: Any, stages: Any) -> str:
    deadline = time.monotonic() + MATCHMAKING_TIMEOUT_S
    while control.stage != stages.AWAITING_TRIGGER:
        if control.done():
            return f"step ended before the all-reduce: {control.exception()!r}"
        if time.monotonic() > deadline:
            return f"no group within {MATCHMAKING_TIMEOUT_S} s"
        time.sleep(STAGE_POLL_S)
    return ""


def run_round(averager: Any, args: argparse.Namespace, command: dict[str, Any]) -> None:
    get_dht_time = importlib.import_module("hivemind.utils.timed_storage").get_dht_time
    stages = importlib.import_module("hivemind.averaging.control").AveragingStage
    fill = args.index + int(command["round"])
    with averager.get_tensors() as tensors:
        tensors[0].fill_(float(fill))
    control = averager.step(
        scheduled_time=get_dht_time() + args.matchmaking_s,
        timeout=MATCHMAKING_TIMEOUT_S,
        require_trigger=True,
        wait=False,
    )
    problem = wait_matched(control, stages)
    emit("matched", error=problem)
    if problem:
        return
    if read_command().get("cmd") != "go":
        control.cancel()
        return
    started = time.monotonic()
    control.allow_allreduce()
    error = ""
    try:
        gathered = control.result(timeout=args.allreduce_timeout_s)
        ok = gathered is not None
        group = len(gathered) if gathered else 0
    except Exception as exc:  # report what hivemind raised; the coordinator judges it
        ok, group, error = False, 0, repr(exc)
    finished = time.monotonic()
    survivors = [int(i) for i in command.get("survivors", range(args.peers))]
    with averager.get_tensors() as tensors:
        held = summary(tensors[0], args.peers, survivors, int(command["round"]))
    emit("done", t0=started, t1=finished, ok=ok, group=group, error=error, **held)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--peers", type=int, required=True)
    parser.add_argument("--floats", type=int, required=True)
    parser.add_argument("--initial-peers", nargs="*", default=[])
    parser.add_argument("--matchmaking-s", type=float, default=2.0)
    parser.add_argument("--allreduce-timeout-s", type=float, default=120.0)
    parser.add_argument("--next-chunk-timeout-s", type=float, default=5.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    hm = importlib.import_module("hivemind")
    dht = hm.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=args.initial_peers)
    averager = hm.averaging.DecentralizedAverager(
        averaged_tensors=[torch.zeros(args.floats, dtype=torch.float32)],
        dht=dht,
        start=True,
        prefix="bench",
        target_group_size=args.peers,
        min_group_size=2,
        min_matchmaking_time=args.matchmaking_s,
        request_timeout=min(1.0, args.matchmaking_s / 2),
        allreduce_timeout=args.allreduce_timeout_s,
        next_chunk_timeout=args.next_chunk_timeout_s,
    )
    emit("up", maddrs=[str(m) for m in dht.get_visible_maddrs()])
    while (command := read_command()).get("cmd") == "round":
        run_round(averager, args, command)
    averager.shutdown()
    dht.shutdown()


if __name__ == "__main__":
    main()
