"""Digits with Keras on a swarm: each node trains on its own label-skewed share.

python train.py --node 0 --nodes 3 --data-dir ../../run/n0     # one per node
SWARM_LOOPBACK=True python train.py --node 0 --nodes 3          # alone, for comparison
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter

import keras
import numpy as np
import tensorflow as tf
from sklearn.datasets import load_digits

from swarmlearn.callback.keras import SwarmCallback


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
    parser.add_argument(
        "--adaptive", action="store_true", help="useAdaptiveSync: sync less while val loss falls"
    )
    args = parser.parse_args()
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    test = slice(0, 300)  # the same held-out set for every node
    x_train, y_train = x[300:], y[300:]
    keep = (y_train % args.nodes) != args.node  # label skew: this node lacks some classes
    x_mine, y_mine = x_train[keep], y_train[keep]
    val = len(x_mine) // 5  # a fifth of this node's share validates (PERFDATA, adaptive sync)
    data = (
        tf.data.Dataset.from_tensor_slices((x_mine[val:], y_mine[val:]))
        .shuffle(len(x_mine), seed=args.node)
        .repeat()
        .batch(32)
    )
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(64),
            keras.layers.BatchNormalization(momentum=0.9),
            keras.layers.ReLU(),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    swarm = SwarmCallback(
        syncFrequency=args.sync_frequency,
        minPeers=args.nodes,
        totalEpochs=args.epochs,
        useAdaptiveSync=args.adaptive,
        adsValData=(x_mine[:val], y_mine[:val]),
        adsValBatchSize=64,
        nodeSocket=str(args.data_dir / "sl.sock"),
    )
    model.fit(
        data,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        shuffle=False,  # the pipeline shuffles (seeded per node)
        verbose=0,
        callbacks=[swarm],
    )
    _, accuracy = model.evaluate(x[test], y[test], verbose=0)
    mode = "alone" if os.environ.get("SWARM_LOOPBACK") else f"swarm of {args.nodes}"
    print(f"node {args.node} ({mode}): test accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()
