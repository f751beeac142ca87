"""Digits with PyTorch on a swarm: each node trains on its own label-skewed share.

python train.py --node 0 --nodes 3 --data-dir ../../run/n0     # one per node
SWARM_LOOPBACK=True python train.py --node 0 --nodes 3          # alone, for comparison
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from sklearn.datasets import load_digits

from swarmlearn.callback.pytorch import SwarmCallback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node", type=int, required=True, help="this node's index")
    parser.add_argument("--nodes", type=int, default=3, help="how many nodes train")
    parser.add_argument(
        "--data-dir", type=Path, default=Path("swarm-data"), help="the node's --data-dir"
    )
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--sync-frequency", type=int, default=20)
    parser.add_argument(
        "--steps-per-epoch",
        type=int,
        default=25,
        help="the same on every node, so every node syncs the same number of times",
    )
    args = parser.parse_args()
    x, y = load_digits(return_X_y=True)
    test = slice(0, 300)  # the same held-out set for every node
    x_train, y_train = x[300:], y[300:]
    keep = (y_train % args.nodes) != args.node  # label skew: this node lacks some classes
    data = torch.utils.data.TensorDataset(
        torch.tensor(x_train[keep] / 16.0, dtype=torch.float32), torch.tensor(y_train[keep])
    )
    loader = torch.utils.data.DataLoader(
        data, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(args.node)
    )
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 64), torch.nn.BatchNorm1d(64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with SwarmCallback(
        syncFrequency=args.sync_frequency,
        minPeers=args.nodes,
        model=model,
        totalEpochs=args.epochs,
        nodeSocket=str(args.data_dir / "sl.sock"),
    ) as swarm:
        batches = _forever(loader)
        for _ in range(args.epochs):
            for _ in range(args.steps_per_epoch):
                xb, yb = next(batches)
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(xb), yb).backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                swarm.step()
            swarm.on_epoch_end()
    model.eval()
    with torch.no_grad():
        predicted = model(torch.tensor(x[test] / 16.0, dtype=torch.float32)).argmax(dim=1)
    accuracy = float((predicted == torch.tensor(y[test])).float().mean())
    mode = "alone" if os.environ.get("SWARM_LOOPBACK") else f"swarm of {args.nodes}"
    print(f"node {args.node} ({mode}): test accuracy {accuracy:.3f}")


def _forever(
    loader: torch.utils.data.DataLoader[tuple[torch.Tensor, ...]],
) -> Iterator[tuple[torch.Tensor, ...]]:
    while True:
        yield from loader


if __name__ == "__main__":
    main()
