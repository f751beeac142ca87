"""What the Keras callback's tests and their training processes share: the test network
(BatchNormalization, layers named so weights match in any thread), label-skewed digits and
the held-out accuracy. Importing it imports TensorFlow (quietly) but not torch."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before tensorflow is imported

from typing import Any

import keras
import numpy as np
from sklearn.datasets import load_digits

TEST = slice(0, 300)  # held out: the same test set for every node


def net(seed: int = 0) -> keras.Model:
    """A small classifier with BatchNormalization; layers named, so weights match anywhere."""
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(
                32, kernel_initializer=keras.initializers.GlorotUniform(seed), name="hidden"
            ),
            keras.layers.BatchNormalization(momentum=0.9, name="norm"),
            keras.layers.ReLU(name="relu"),
            keras.layers.Dense(
                10, kernel_initializer=keras.initializers.GlorotUniform(seed + 1), name="out"
            ),
        ],
        name="digits",
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def digits(node: int, nodes: int = 2) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """This node's training share: label skew, it never sees digits d with d % nodes == node."""
    x, y = load_digits(return_X_y=True)
    x_train, y_train = x[300:] / 16.0, y[300:]
    keep = (y_train % nodes) != node
    return x_train[keep].astype(np.float32), y_train[keep]


def accuracy(weights: list[np.ndarray[Any, Any]]) -> float:
    """The test network with ``weights``, on the held-out digits."""
    model = net()
    model.set_weights(weights)
    x, y = load_digits(return_X_y=True)
    logits = model.predict(x[TEST] / 16.0, verbose=0)
    return float(np.mean(np.argmax(logits, axis=1) == y[TEST]))
