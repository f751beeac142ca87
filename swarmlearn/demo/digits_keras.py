"""The demo's workload in Keras (TensorFlow backend): the same data, split and steps per round
as :mod:`swarmlearn.demo.digits`, and the same network (Dense-BatchNorm-ReLU-Dense).

Needs the ``keras`` extra.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter

from typing import Any

import keras
import tensorflow as tf

from swarmlearn.demo.digits import BATCH_SIZE, LEARNING_RATE, SEED, Array, Share


def make_model(seed: int = SEED) -> Any:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(64),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def batches(share: Share, seed: int) -> Any:
    """Shuffled mini-batches, epoch after epoch, forever (seeded per node)."""
    return (
        tf.data.Dataset.from_tensor_slices((share.x, share.y))
        .shuffle(len(share.y), seed=seed, reshuffle_each_iteration=True)
        .repeat()
        .batch(BATCH_SIZE)
    )


def accuracy(model: Any, x: Array, y: Array) -> float:
    return float(model.evaluate(x, y, verbose=0)[1])


def train_alone(
    share: Share, rounds: int, steps: int, x_test: Array, y_test: Array, seed: int
) -> list[float]:
    """A model trained on ``share`` only, the same steps per round; its accuracy after each."""
    model = make_model()
    curve: list[float] = []

    class Measure(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            curve.append(accuracy(model, x_test, y_test))

    model.fit(
        batches(share, seed),
        epochs=rounds,
        steps_per_epoch=steps,
        shuffle=False,  # the pipeline shuffles (seeded per node)
        verbose=0,
        callbacks=[Measure()],
    )
    return curve
