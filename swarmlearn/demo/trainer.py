"""One node's training process in the demo: ``python -m swarmlearn.demo.trainer``.

It trains the demo's model on its label-skewed share with the PyTorch ``SwarmCallback`` (HPE's
four hooks, as a user would write them), handing weights to its ``swarm-node`` through the
node's local socket, and tells the demo what happens as JSON lines on stdout: ``start``, one
``round`` per merged round (peers, merge time, merged hash, test accuracy of the merged model)
and ``done``. The callback's own log goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from swarmlearn.callback.core import SwarmCore
from swarmlearn.callback.pytorch import SwarmCallback
from swarmlearn.demo import digits


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


class RoundReporter:
    """Emits a ``round`` event each time the callback has merged a new round."""

    def __init__(self, swarm: SwarmCore, node: int, accuracy: Callable[[], float]) -> None:
        self.swarm, self.node, self.accuracy = swarm, node, accuracy
        self.seen = 0

    def __call__(self, epoch: int) -> None:
        outcome = self.swarm.last_round
        if self.swarm.rounds_done == self.seen or outcome is None:
            return
        self.seen = self.swarm.rounds_done
        emit(
            "round",
            node=self.node,
            round=outcome.round,
            peers=outcome.participants,
            merge_s=round(self.swarm.last_round_s, 3),
            hash=outcome.root.hex(),
            epoch=epoch,
            accuracy=self.accuracy(),
        )

    def done(self) -> None:
        final = self.swarm.last_round
        emit(
            "done",
            node=self.node,
            rounds=self.swarm.rounds_done,
            hash=final.root.hex() if final else "",
            accuracy=self.accuracy(),
        )


def add_trainer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--node", type=int, required=True)
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--epochs-per-round", type=int, default=1)
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--merge-method", default="mean")
    parser.add_argument("--sync-timeout", type=float, default=120.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_trainer_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # several trainers share the machine's cores

    x_train, y_train, x_test, y_test = digits.dataset()
    shares = digits.split(x_train, y_train, args.nodes)
    share = shares[args.node]
    steps = digits.steps_per_round(shares, args.epochs_per_round)
    model = digits.make_model()
    optimizer = digits.optimizer_for(model)
    val = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(share.x), torch.from_numpy(share.y)),
        batch_size=256,
    )
    logger = logging.getLogger(f"trainer-{args.node}")
    logger.addHandler(logging.StreamHandler(sys.stderr))
    logger.setLevel(logging.INFO)
    emit("start", node=args.node, samples=len(share.y), missing=list(share.missing), steps=steps)

    swarm = SwarmCallback(
        syncFrequency=steps,
        minPeers=args.nodes,
        model=model,
        mergeMethod=args.merge_method,
        totalEpochs=args.rounds * args.epochs_per_round,
        adsValData=val,
        lossFunction="CrossEntropyLoss",
        metricFunction="Accuracy",
        nodeSocket=str(args.socket),
        syncTimeout=args.sync_timeout,
        logger=logger,
    )
    report = RoundReporter(swarm, args.node, lambda: digits.accuracy(model, x_test, y_test))

    swarm.on_train_begin()
    report(0)
    feed = digits.batches(share, seed=args.node)
    for number in range(args.rounds):
        for _ in range(steps):
            digits.train_step(model, optimizer, next(feed))
            swarm.on_batch_end()
        for epoch in range(args.epochs_per_round):
            swarm.on_epoch_end(number * args.epochs_per_round + epoch)
        report((number + 1) * args.epochs_per_round)
    swarm.on_train_end()
    report(args.rounds * args.epochs_per_round)
    report.done()
    return 0


if __name__ == "__main__":
    sys.exit(main())
