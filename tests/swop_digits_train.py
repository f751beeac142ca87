"""The training program of the SWOP end-to-end test: a RUN_SWARM task starts it on each host.

Tiny and quick (a linear model on sklearn's digits, 2 epochs of 20 batches, a sync every 10):
each node trains on its own half of the labels (``NODE`` from the profile's usrenvvars), talks
to its host's SL node through ``SWARM_NODE_SOCKET`` (set by the SWOP) and reports loss and
accuracy on a shared validation set, which PERFDATA shows.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from sklearn.datasets import load_digits

from swarmlearn.callback.pytorch import SwarmCallback

EPOCHS = 2
STEPS_PER_EPOCH = 20


def main() -> None:
    node = int(os.environ["NODE"])
    x, y = load_digits(return_X_y=True)
    features = torch.tensor(x / 16.0, dtype=torch.float32)
    labels = torch.tensor(y)
    validation = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(features[:200], labels[:200]), batch_size=100
    )
    mine = (labels[200:] % 2) == node  # label skew: even digits on node 0, odd on node 1
    train = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(features[200:][mine], labels[200:][mine]),
        batch_size=32,
        shuffle=True,
        generator=torch.Generator().manual_seed(node),
    )
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    with SwarmCallback(
        syncFrequency=10,
        minPeers=2,
        model=model,
        totalEpochs=EPOCHS,
        trainingContract=os.environ["CONTRACT"],
        lossFunction="CrossEntropyLoss",
        adsValData=validation,
    ) as swarm:
        batches = _forever(train)
        for _ in range(EPOCHS):
            for _ in range(STEPS_PER_EPOCH):
                xb, yb = next(batches)
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(xb), yb)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                swarm.step()
            swarm.on_epoch_end()
    print(f"node {node}: trained {EPOCHS} epochs on the swarm")


def _forever(
    loader: torch.utils.data.DataLoader[tuple[torch.Tensor, ...]],
) -> Iterator[tuple[torch.Tensor, ...]]:
    while True:
        yield from loader


if __name__ == "__main__":
    main()
