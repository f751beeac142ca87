"""One node's training process in the Keras demo: ``python -m swarmlearn.demo.trainer_keras``.

The same contract as :mod:`swarmlearn.demo.trainer` (arguments, JSON events on stdout), with
``model.fit(..., callbacks=[SwarmCallback(...)])`` as a Keras user writes it: one "epoch" of
``fit`` is one round's steps, after which the callback syncs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from swarmlearn.demo import digits, digits_keras
from swarmlearn.demo.trainer import RoundReporter, add_trainer_arguments, emit


def main(argv: list[str] | None = None) -> int:
    import keras

    from swarmlearn.callback.keras import SwarmCallback

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_trainer_arguments(parser)
    args = parser.parse_args(argv)
    x_train, y_train, x_test, y_test = digits.dataset()
    shares = digits.split(x_train, y_train, args.nodes)
    share = shares[args.node]
    steps = digits.steps_per_round(shares, args.epochs_per_round)
    model = digits_keras.make_model()
    logger = logging.getLogger(f"trainer-{args.node}")
    logger.addHandler(logging.StreamHandler(sys.stderr))
    logger.setLevel(logging.INFO)
    emit("start", node=args.node, samples=len(share.y), missing=list(share.missing), steps=steps)
    swarm = SwarmCallback(
        syncFrequency=steps,
        minPeers=args.nodes,
        mergeMethod=args.merge_method,
        totalEpochs=args.rounds,
        adsValData=(share.x, share.y),
        adsValBatchSize=256,
        nodeSocket=str(args.socket),
        syncTimeout=args.sync_timeout,
        logger=logger,
    )
    report = RoundReporter(swarm, args.node, lambda: digits_keras.accuracy(model, x_test, y_test))

    class Report(keras.callbacks.Callback):  # type: ignore[misc]
        def on_train_begin(self, logs: Any = None) -> None:
            report(0)

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            report((epoch + 1) * args.epochs_per_round)

    model.fit(
        digits_keras.batches(share, seed=args.node),
        epochs=args.rounds,
        steps_per_epoch=steps,
        shuffle=False,  # the pipeline shuffles (seeded per node)
        verbose=0,
        callbacks=[swarm, Report()],  # the swarm's hooks run first: Report sees the round
    )
    report(args.rounds * args.epochs_per_round)  # the final round, in on_train_end
    report.done()
    return 0


if __name__ == "__main__":
    sys.exit(main())
