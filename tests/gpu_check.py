"""GPU check of the PyTorch SwarmCallback, for a machine with CUDA (not collected by pytest):

    python tests/gpu_check.py [--device cuda] [--size-mb 100]

Two real swarm-node daemons on loopback (``LocalSwarm``), two training threads each with a
model on the GPU (BatchNorm: float buffers and an int64 ``num_batches_tracked``, plus a
bfloat16 layer). Checks: after every sync and at the end the model's tensors are still on the
GPU with their dtypes; both nodes end bit-identical. Then one sync of a ``--size-mb`` model on
the GPU, with the handover split (flatten = device-to-host, load = host-to-device). Prints one
JSON line; exit status 1 if a check failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from swarmlearn.callback.pytorch import SwarmCallback
from swarmlearn.demo.swarm import LocalSwarm


class SmallNet(torch.nn.Module):
    """BatchNorm (float buffers and an int64 counter) and a bfloat16 layer."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(64, 32),
            torch.nn.BatchNorm1d(32),
            torch.nn.ReLU(),
            torch.nn.Linear(32, 10),
        )
        self.low = torch.nn.Linear(10, 10).to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.body(x)
        low: torch.Tensor = self.low(logits.to(torch.bfloat16))
        return logits + low.float() * 1e-3


def small_model(device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return SmallNet().to(device)


def train(socket: Path, node: int, device: str, out: dict[Any, Any], problems: list[str]) -> None:
    model = small_model(device)
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    generator = torch.Generator(device=device).manual_seed(node)
    with SwarmCallback(
        syncFrequency=5, minPeers=2, model=model, nodeSocket=str(socket), syncTimeout=120
    ) as swarm:
        for step in range(20):
            x = torch.randn(16, 64, device=device, generator=generator)
            y = torch.randint(0, 10, (16,), device=device, generator=generator)
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            swarm.step()
            for name, tensor in model.state_dict().items():
                if tensor.device.type != torch.device(device).type or tensor.dtype != dtypes[name]:
                    problems.append(
                        f"node {node} step {step}: {name} on {tensor.device} {tensor.dtype}"
                    )
    out[node] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    out[f"rounds{node}"] = swarm.rounds_done


def big_sync(socket: Path, node: int, device: str, size_mb: int, out: dict[Any, Any]) -> None:
    layers = max(1, round(size_mb * 1e6 / (4 * 1024 * 1024)))
    torch.manual_seed(node)
    model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(layers)]).to(device)
    swarm = SwarmCallback(
        syncFrequency=1, minPeers=2, model=model, nodeSocket=str(socket), syncTimeout=120
    )
    swarm.on_train_begin()
    swarm.on_batch_end()  # a second sync, timed warm
    timing = swarm.last_timing
    out[f"big{node}"] = {
        "round_s": round(swarm.last_round_s, 4),
        "handover_s": round(timing.handover_s, 4),
        "flatten_d2h_s": round(timing.flatten_s, 4),
        "load_h2d_s": round(timing.load_s, 4),
        "on_device": all(
            t.device.type == torch.device(device).type for t in model.state_dict().values()
        ),
    }
    swarm.on_train_end()


def run_pair(target: Any, sockets: list[Path], *extra: Any) -> None:
    threads = [threading.Thread(target=target, args=(s, i, *extra)) for i, s in enumerate(sockets)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size-mb", type=int, default=100)
    args = parser.parse_args()
    out: dict[Any, Any] = {}
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as scratch, LocalSwarm(Path(scratch), 2) as swarm:
        run_pair(train, [node.socket for node in swarm.nodes], args.device, out, problems)
    # a fresh swarm: the default contract's layout is the small model's now
    with tempfile.TemporaryDirectory() as scratch, LocalSwarm(Path(scratch), 2) as swarm:
        run_pair(big_sync, [node.socket for node in swarm.nodes], args.device, args.size_mb, out)
    identical = 0 in out and 1 in out and all(torch.equal(v, out[1][k]) for k, v in out[0].items())
    if not identical:
        problems.append("the two nodes' final weights differ")
    result = {
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else args.device,
        "torch": torch.__version__,
        "rounds": [out.get("rounds0"), out.get("rounds1")],
        "identical": identical,
        "big": [out.get("big0"), out.get("big1")],
        "problems": problems[:10],
        "ok": not problems
        and all(b and b["on_device"] for b in (out.get("big0"), out.get("big1"))),
    }
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
