"""The workload of bench/flower.py: the bench's settings and the demo's data, model and training.

Every framework in the comparison trains the same thing, swarmlearn.demo.digits, exactly as
the demo's trainer (swarmlearn/demo/trainer.py) does: the same label-skewed share per node, the
same seeded model, SGD, the same steps per round and the same seeded stream of mini-batches
(a ClientApp is stateless between rounds, so it replays its node's stream up to the round).
The settings come from the ``SWARMLEARN_FLOWER_BENCH`` environment variable (JSON), which the
SuperLink, the SuperNodes and the simulation's Ray workers inherit from flower_run.py.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch

from swarmlearn.demo import digits

ENV = "SWARMLEARN_FLOWER_BENCH"


@dataclass(frozen=True)
class Settings:
    nodes: int
    rounds: int
    epochs: int
    result: str  # where the ServerApp writes its JSON


def settings() -> Settings:
    raw = json.loads(os.environ[ENV])
    return Settings(int(raw["nodes"]), int(raw["rounds"]), int(raw["epochs"]), raw["result"])


@cache
def data() -> tuple[Any, ...]:
    return digits.dataset()


def new_model() -> torch.nn.Module:
    """The demo's model with its seeded start, the same on every node."""
    return digits.make_model()


def train(model: torch.nn.Module, node: int, server_round: int, config: Settings) -> int:
    """Round ``server_round`` of node ``node``'s training; returns its example count."""
    torch.set_num_threads(1)  # as the demo's trainers: several share the machine's cores
    x_train, y_train, _, _ = data()
    shares = digits.split(x_train, y_train, config.nodes)
    steps = digits.steps_per_round(shares, config.epochs)
    feed = digits.batches(shares[node], seed=node)
    for _ in range((server_round - 1) * steps):
        next(feed)
    optimizer = digits.optimizer_for(model)  # plain SGD: no state to carry between rounds
    for _ in range(steps):
        digits.train_step(model, optimizer, next(feed))
    return len(shares[node].y)


def accuracy(model: torch.nn.Module) -> float:
    """Accuracy on the demo's shared test set."""
    _, _, x_test, y_test = data()
    return digits.accuracy(model, x_test, y_test)
