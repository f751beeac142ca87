"""Robustness experiment: federated softmax regression on sklearn's digits with byzantine peers.

Ten contributors, each with its own split of the training data, train one model: every round
each starts from the merged model, takes two minibatch SGD steps on its split (seeded), and
contributes its weights, weighted by its sample count. Three are byzantine and send their
weights multiplied by -1 (sign flip) or by 100 (scaled up). The robust methods must stay
within 2 accuracy points of the clean run (no attackers, mean); the mean must collapse.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from sklearn.datasets import load_digits

from swarmlearn.merge import GeoMedian, Krum, Method, ModelState, MultiKrum, TrimmedMean, merge

CONTRIBUTORS = 10
BYZANTINE = 3
ROUNDS = 100
LOCAL_STEPS = 2
BATCH = 64
LEARNING_RATE = 2.0  # decays linearly to 0 over the rounds
L2 = 1e-3
TEST_SAMPLES = 360
SEED = 0

Data = tuple[
    NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[Any], list[NDArray[Any]]
]


@cache
def digits() -> Data:
    features, labels = load_digits(return_X_y=True)
    order = np.random.default_rng(SEED).permutation(len(features))
    features, labels = features[order] / 16.0, labels[order]
    train = features[TEST_SAMPLES:]
    onehot = np.eye(10)[labels[TEST_SAMPLES:]]
    splits = np.array_split(np.arange(len(train)), CONTRIBUTORS)
    return train, onehot, features[:TEST_SAMPLES], labels[:TEST_SAMPLES], splits


def local_steps(
    weights: NDArray[np.float64],
    bias: NDArray[np.float64],
    rows: NDArray[Any],
    rate: float,
    rng: np.random.Generator,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    train, onehot, _, _, _ = digits()
    for _ in range(LOCAL_STEPS):
        batch = rng.choice(rows, BATCH, replace=False)
        logits = train[batch] @ weights + bias
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        gradient = (probabilities - onehot[batch]) / BATCH
        weights = weights - rate * (train[batch].T @ gradient + L2 * weights)
        bias = bias - rate * gradient.sum(axis=0)
    return weights, bias


@cache
def accuracy(method: Method | str, attack: float | None) -> float:
    """Test accuracy after federated training with ``method`` (attackers scale by ``attack``)."""
    _, _, test, test_labels, splits = digits()
    weights, bias = np.zeros((64, 10)), np.zeros(10)
    rngs = [np.random.default_rng([SEED, k]) for k in range(CONTRIBUTORS)]
    counts = [len(rows) for rows in splits]
    with np.errstate(all="ignore"):  # the attacked mean overflows on purpose
        for round_index in range(ROUNDS):
            rate = LEARNING_RATE * (1 - round_index / ROUNDS)
            states = []
            for k, rows in enumerate(splits):
                w, b = local_steps(weights, bias, rows, rate, rngs[k])
                if attack is not None and k < BYZANTINE:
                    w, b = w * attack, b * attack
                states.append(
                    ModelState({"fc.weight": w.astype(np.float32), "fc.bias": b.astype(np.float32)})
                )
            merged = merge(states, counts, method)
            weights = merged["fc.weight"].astype(np.float64)
            bias = merged["fc.bias"].astype(np.float64)
        if not (np.all(np.isfinite(weights)) and np.all(np.isfinite(bias))):
            return 0.0
        return float(np.mean(np.argmax(test @ weights + bias, axis=1) == test_labels))


ROBUST: list[Method | str] = [
    Krum(byzantine_max=BYZANTINE),
    "coordmedian",
    TrimmedMean(trim_fraction=0.3),
    MultiKrum(byzantine_max=BYZANTINE),
    GeoMedian(),
]


def test_clean_training_learns_digits() -> None:
    assert accuracy("mean", None) > 0.95


@pytest.mark.parametrize("attack", [-1.0, 100.0], ids=["sign_flip", "scaled_x100"])
@pytest.mark.parametrize("method", ROBUST, ids=lambda m: m if isinstance(m, str) else m.name)
def test_robust_methods_stay_within_two_points(method: Method | str, attack: float) -> None:
    assert accuracy(method, attack) >= accuracy("mean", None) - 0.02


@pytest.mark.parametrize("attack", [-1.0, 100.0], ids=["sign_flip", "scaled_x100"])
def test_mean_collapses_under_attack(attack: float) -> None:
    assert accuracy("mean", attack) < accuracy("mean", None) - 0.3
