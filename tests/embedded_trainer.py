"""A training script for the embedded-mode test: ``python -m tests.embedded_trainer NODE NODES
CONFIG OUT``. It trains the test network on its label-skewed digits with the node embedded in
this process (``nodeConfig``) and saves the final state_dict to OUT."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from swarmlearn.callback.pytorch import SwarmCallback
from tests.test_callback_torch import digits_split, net


def main() -> None:
    train(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))


def train(node: int, nodes: int, config: str, out: Path) -> None:
    """Two epochs on this node's share, a sync every 20 batches (alone with SWARM_LOOPBACK)."""
    torch.set_num_threads(1)
    model = net()
    x, y = digits_split(node, nodes)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=False
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with SwarmCallback(syncFrequency=20, minPeers=nodes, model=model, nodeConfig=config) as swarm:
        for _ in range(2):
            for xb, yb in loader:
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(xb), yb).backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                swarm.step()
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, out)
    print(f"node {node}: {swarm.rounds_done} rounds", flush=True)


if __name__ == "__main__":
    main()
