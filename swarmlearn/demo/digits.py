"""The demo's workload: sklearn's bundled digits, split across nodes with label skew.

Every comparison (the demo's table, ``bench/flower.py``) trains this same thing, so the
numbers differ only by how the nodes work together:

- the data: 1,797 8x8 digits; a fixed, seeded 20% is the shared test set;
- the split: the training set is dealt out in disjoint shares, with label skew — node ``i``
  never holds a digit ``d`` with ``d % nodes == i`` (with 4 nodes, node 0 lacks 0, 4 and 8),
  so alone it cannot recognise those;
- the model: a small MLP with BatchNorm (so buffers travel too), the same seeded start;
- a round: every node takes the same number of SGD steps (the average share's batches times
  ``epochs_per_round``), so all nodes reach each sync point together.

Needs the ``torch`` extra and scikit-learn.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

TEST_FRACTION = 0.2
BATCH_SIZE = 32
LEARNING_RATE = 0.1
SEED = 0

Array = np.ndarray[Any, Any]


@dataclass(frozen=True)
class Share:
    """One node's training data, and what it lacks."""

    x: Array
    y: Array
    missing: tuple[int, ...]


def dataset(seed: int = SEED) -> tuple[Array, Array, Array, Array]:
    """(x_train, y_train, x_test, y_test): pixels scaled to 0..1, a seeded shuffle."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = (x[order] / 16.0).astype(np.float32), y[order].astype(np.int64)
    cut = int(len(y) * TEST_FRACTION)
    return x[cut:], y[cut:], x[:cut], y[:cut]


def split(x: Array, y: Array, nodes: int) -> list[Share]:
    """Disjoint, label-skewed shares: each sample of digit ``d`` goes, in turn, to one of the
    nodes that are not missing ``d``."""
    if nodes < 1:
        raise ValueError("nodes must be at least 1")
    missing = [tuple(d for d in range(10) if nodes > 1 and d % nodes == i) for i in range(nodes)]
    owners = {d: [i for i in range(nodes) if d not in missing[i]] for d in range(10)}
    dealt = {d: 0 for d in range(10)}
    picks: list[list[int]] = [[] for _ in range(nodes)]
    for index, digit in enumerate(y.tolist()):
        holders = owners[digit]
        picks[holders[dealt[digit] % len(holders)]].append(index)
        dealt[digit] += 1
    return [Share(x[p], y[p], missing[i]) for i, p in enumerate(picks)]


def steps_per_round(shares: list[Share], epochs_per_round: int) -> int:
    """The same for every node: the average share's batches per epoch, times the epochs."""
    average = sum(len(s.y) for s in shares) / len(shares)
    return max(1, math.ceil(average / BATCH_SIZE)) * epochs_per_round


def make_model(seed: int = SEED) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 64), torch.nn.BatchNorm1d(64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
    )


def optimizer_for(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)


def batches(share: Share, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled mini-batches, epoch after epoch, forever (seeded per node)."""
    x, y = torch.from_numpy(share.x), torch.from_numpy(share.y)
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), BATCH_SIZE):
            pick = order[start : start + BATCH_SIZE]
            if len(pick) > 1:  # BatchNorm needs two samples to train
                yield x[pick], y[pick]


def train_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: tuple[torch.Tensor, ...]
) -> float:
    model.train()
    optimizer.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(batch[0]), batch[1])
    loss.backward()  # type: ignore[no-untyped-call]
    optimizer.step()
    return loss.item()


def accuracy(model: torch.nn.Module, x: Array, y: Array) -> float:
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    return float((predicted == y).mean())


def train_alone(
    share: Share, rounds: int, steps: int, x_test: Array, y_test: Array, seed: int
) -> list[float]:
    """A model trained on ``share`` only, the same steps per round; its accuracy after each."""
    model = make_model()
    optimizer = optimizer_for(model)
    feed = batches(share, seed)
    curve = []
    for _ in range(rounds):
        for _ in range(steps):
            train_step(model, optimizer, next(feed))
        curve.append(accuracy(model, x_test, y_test))
    return curve
