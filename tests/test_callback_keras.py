"""The Keras SwarmCallback: HPE's argument checks, every weight in and out with its dtype,
loopback, batch counting under fit, and real training on two swarm-node daemons (one script
in HPE's exact Keras style, one with ours) that ends bit-identical and beats training alone."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before tensorflow is imported

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

from swarmlearn.callback.core import SwarmError
from swarmlearn.callback.keras import SwarmCallback, load_state, state_of, weight_names
from swarmlearn.errors import ConfigError
from tests.keras_helpers import accuracy, digits, net
from tests.test_callback_embedded import NODES, write_configs
from tests.test_callback_torch import run_scripts, two_daemons

EPOCHS = 3
EMBEDDED_TIMEOUT_S = 240


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"syncFrequency": 0}, "syncFrequency must be >= 1, got 0"),
        ({"minPeers": "many"}, "minPeers must be an integer, got 'many'"),
        ({"nodeWeightage": 0}, r"nodeWeightage must be 1\.\.100, got 0"),
        (
            {"mergeMethod": "average"},
            "merge method 'average' is not one of: coordmedian, geomedian,",
        ),
        (
            {"checkinModelOnTrainEnd": "never"},
            "checkinModelOnTrainEnd must be one of inactive, snapshot, active",
        ),
        ({"useAdaptiveSync": True}, "useAdaptiveSync needs adsValData"),
        ({"adsValBatchSize": -1}, "adsValBatchSize must be >= 1, got -1"),
        ({"syncFrequncy2": 1}, "unknown option 'syncFrequncy2'"),
        ({"totalEpoch": 3}, "unknown option 'totalEpoch'; did you mean 'totalEpochs'?"),
        ({"adsValData": [1, 2]}, r"adsValData must be an \(x, y\) or \(x, y, sample_weight\)"),
        ({"adsValData": (1,)}, "tf.data.Dataset or a keras.utils.PyDataset, got tuple"),
        ({"lossFunction": "CrossEntropyLoss"}, "lossFunction is a PyTorch option: Keras takes"),
        ({"model": object()}, "model is a PyTorch option: Keras takes the model from model.fit"),
        ({"mlPlatform": "PYTORCH"}, "mlPlatform 'PYTORCH': this is the Keras callback"),
        ({"ml_platform": "TF"}, r"TF1 graph mode \(mlPlatform='TF' with tf= and sess=\)"),
        ({"sess": object()}, "TF1 graph mode .* is not supported: train a Keras model"),
        ({"trainingContract": ""}, "trainingContract must be a contract name"),
    ],
)
def test_bad_arguments_say_what_is_wrong(
    loopback: None, kwargs: dict[str, object], message: str
) -> None:
    arguments: dict[str, object] = {"syncFrequency": 10, "minPeers": 2, **kwargs}
    with pytest.raises(SwarmError, match=message):
        SwarmCallback(**arguments)  # type: ignore[arg-type]


def test_hpe_alias_ml_platform_and_a_keras_callback(loopback: None) -> None:
    callback = SwarmCallback(10, 2, mlPlatform="KERAS", adsValData=(np.ones(2), np.ones(2)))
    assert isinstance(callback, keras.callbacks.Callback)
    assert callback.loopback
    assert callback.valBatchSize is None


def test_another_keras_backend_is_one_clear_line(
    loopback: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(SwarmError, match="needs the TensorFlow backend, Keras runs on 'jax'"):
        SwarmCallback(10, 2)


def test_without_loopback_a_missing_node_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("swarmlearn.callback.core.NODE_WAIT_S", 0.0)  # no wait for it
    with pytest.raises(ConfigError, match=r"no swarm node answered at .*sl.sock within 0 s"):
        SwarmCallback(10, 2, nodeSocket=str(tmp_path / "sl.sock"))


class Counter(keras.layers.Layer):  # type: ignore[misc]
    """Weights of other dtypes: an int64 scalar it counts with, two of one name."""

    def build(self, input_shape: tuple[int, ...]) -> None:
        self.seen = self.add_weight(
            shape=(), dtype="int64", initializer="zeros", trainable=False, name="seen"
        )
        self.scale = self.add_weight(
            shape=(input_shape[-1],), dtype="bfloat16", initializer="ones", trainable=False,
            name="scale",
        )  # fmt: skip
        self.shift = self.add_weight(
            shape=(input_shape[-1],), dtype="float16", initializer="zeros", trainable=False,
            name="scale",
        )  # fmt: skip

    def call(self, x: Any, training: bool = False) -> Any:
        if training:
            self.seen.assign_add(tf.shape(x, out_type=tf.int64)[0])
        return x * keras.ops.cast(self.scale, x.dtype) + keras.ops.cast(self.shift, x.dtype)


def counting_net(seed: int) -> keras.Model:
    model = net(seed)
    model.add(Counter(name="counter"))
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def test_every_weight_travels_with_its_dtype(loopback: None) -> None:
    trained = counting_net(0)
    x, y = digits(0)
    trained.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0, shuffle=False)
    state = state_of(trained)
    assert list(state) == weight_names(trained)
    assert list(state) == [
        "hidden/kernel",
        "hidden/bias",
        "norm/gamma",
        "norm/beta",
        "norm/moving_mean",
        "norm/moving_variance",
        "out/kernel",
        "out/bias",
        "counter/seen",
        "counter/scale",
        "counter/scale#1",
    ]
    assert np.any(state["norm/moving_mean"] != 0)  # non-trainable weights, updated by fit
    assert (state.dtype("counter/seen"), state["counter/seen"].shape) == ("int64", ())
    assert int(state["counter/seen"]) == 64
    assert state.dtype("counter/scale") == "bfloat16"
    assert state.dtype("counter/scale#1") == "float16"
    fresh = counting_net(7)
    load_state(fresh, state)
    for a, b in zip(trained.weights, fresh.weights, strict=True):
        assert a.dtype == b.dtype, a.path
        assert a.numpy().tobytes() == b.numpy().tobytes(), a.path
    with pytest.raises(SwarmError, match="the merged model has no weight 'counter/seen'"):
        load_state(fresh, state_of(net(0)))


def test_loopback_fit_runs_alone_and_a_second_fit_stops_at_once(
    loopback: None, caplog: pytest.LogCaptureFixture
) -> None:
    model = net()
    x, y = digits(0)
    swarm = SwarmCallback(syncFrequency=5, minPeers=2, totalEpochs=EPOCHS)
    with caplog.at_level("INFO", logger="SwarmCallback"):
        history = model.fit(x, y, batch_size=32, epochs=EPOCHS, verbose=0, callbacks=[swarm])
    progress = [r.getMessage() for r in caplog.records if "epoch" in r.getMessage()]
    assert progress[0].startswith("[######..............] epoch 1/3, 0 rounds, ETA ")
    assert progress[-1].startswith("[####################] epoch 3/3, 0 rounds, ETA 0 s")
    losses = history.history["loss"]
    assert len(losses) == EPOCHS
    assert losses[-1] < losses[0] / 2
    assert swarm.isSwarmTrainingOver
    assert swarm.rounds_done == 0
    assert swarm.epochsCompleted == EPOCHS
    again = model.fit(x, y, batch_size=32, epochs=EPOCHS, verbose=0, callbacks=[swarm])
    assert len(again.history["loss"]) == 1  # stop_training after its first batch
    assert swarm.epochsCompleted == EPOCHS


def test_validation_loss_leaves_fits_running_metrics_alone(loopback: None) -> None:
    """PERFDATA's model.evaluate runs mid-fit: it reports adsValData's loss and accuracy, and
    puts back the running totals that fit's epoch figures are built from."""
    model = net()
    x, y = digits(0)
    model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0, shuffle=False)
    swarm = SwarmCallback(10, 2, adsValData=(x[64:128], y[64:128]), adsValBatchSize=16)
    swarm.set_model(model)
    swarm.loopback = False  # as with a node: evaluate before each sync

    def running() -> list[bytes]:
        return [v.numpy().tobytes() for metric in model.metrics for v in metric.variables]

    before = running()
    loss, metric = swarm._evaluate()
    assert before
    assert running() == before
    expected = model.evaluate(x[64:128], y[64:128], batch_size=16, verbose=0, return_dict=True)
    assert running() != before  # what evaluate alone does to them
    assert loss == pytest.approx(expected["loss"])
    assert metric == pytest.approx(expected["accuracy"])


class CountingSyncs(SwarmCallback):
    syncs = 0

    def sync(self, *args: Any, **kwargs: Any) -> Any:
        self.syncs += 1
        return super().sync(*args, **kwargs)


@pytest.mark.parametrize("steps_per_execution", [1, 2])
def test_a_sync_every_sync_frequency_batches(loopback: None, steps_per_execution: int) -> None:
    """30 batches, a sync every 4: the first sync, then after batches 4, 8, ..., 28; with
    steps_per_execution=2, fit calls the hook every 2 batches and the count is the same."""
    model = net()
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        steps_per_execution=steps_per_execution,
    )
    x, y = digits(0)
    swarm = CountingSyncs(syncFrequency=4, minPeers=2)
    model.fit(x[:100], y[:100], batch_size=10, epochs=3, verbose=0, callbacks=[swarm])
    assert swarm.syncs == 1 + 7


def hpe_style_script(socket: Path, node: int, out: dict[int, list[np.ndarray[Any, Any]]]) -> None:
    """Written the way HPE's Keras examples are: import from swarmlearning.tf, fit does it."""
    from swarmlearning.tf import SwarmCallback as HPECallback

    x_train, y_train = digits(node)
    model = net()
    swarmCallback = HPECallback(
        syncFrequency=10,
        minPeers=2,
        useAdaptiveSync=False,
        adsValData=(x_train[:100], y_train[:100]),
        adsValBatchSize=50,
        totalEpochs=EPOCHS,
        nodeSocket=str(socket),
    )
    model.fit(
        x_train,
        y_train,
        batch_size=32,
        epochs=EPOCHS,
        verbose=0,
        shuffle=False,
        callbacks=[swarmCallback],
    )
    out[node] = model.get_weights()


def our_style_script(
    socket: Path,
    node: int,
    out: dict[int, list[np.ndarray[Any, Any]]],
    callbacks: dict[int, SwarmCallback] | None = None,
) -> None:
    """Ours: a tf.data pipeline, validation data as a Dataset."""
    x_train, y_train = digits(node)
    data = tf.data.Dataset.from_tensor_slices((x_train, y_train)).batch(32)
    model = net()
    swarm = SwarmCallback(
        syncFrequency=10, minPeers=2, adsValData=data.take(3), nodeSocket=str(socket)
    )
    model.fit(data, epochs=EPOCHS, verbose=0, shuffle=False, callbacks=[swarm])
    out[node] = model.get_weights()
    if callbacks is not None:
        callbacks[node] = swarm


@pytest.mark.process
def test_two_daemons_hpe_style_and_ours_end_identical_and_beat_training_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each node lacks half the digits: alone it cannot pass 55% on the held-out set; the
    swarm's model, bit-identical on both nodes, BatchNorm statistics included, can."""
    swarm: dict[int, list[np.ndarray[Any, Any]]] = {}
    callbacks: dict[int, SwarmCallback] = {}
    with two_daemons(tmp_path) as data:
        run_scripts(
            threading.Thread(target=hpe_style_script, args=(data[0] / "sl.sock", 0, swarm)),
            threading.Thread(
                target=our_style_script, args=(data[1] / "sl.sock", 1, swarm, callbacks)
            ),
        )
    assert sorted(swarm) == [0, 1]
    ours = callbacks[1]  # 24 batches an epoch: the first sync, one every 10 batches, the end
    assert ours.isSwarmTrainingOver
    assert ours.rounds_done >= 1 + EPOCHS * 24 // 10 + 1
    assert ours.last_timing.load_s > 0
    assert ours.last_timing.handover_s > ours.last_timing.load_s
    for a, b in zip(swarm[0], swarm[1], strict=True):
        assert a.dtype == b.dtype
        assert a.tobytes() == b.tobytes()
    monkeypatch.setenv("SWARM_LOOPBACK", "True")
    alone: dict[int, list[np.ndarray[Any, Any]]] = {}
    hpe_style_script(tmp_path / "unused.sock", 0, alone)
    our_style_script(tmp_path / "unused.sock", 1, alone)
    local_best = max(accuracy(alone[0]), accuracy(alone[1]))
    together = accuracy(swarm[0])
    assert local_best < 0.55, local_best
    assert together > local_best + 0.2, (together, local_best)  # seen: 0.813 vs 0.487


def start_trainer(node: int, config: Path, out: Path) -> subprocess.Popen[str]:
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    environment.pop("SWARM_LOOPBACK", None)
    arguments = [str(node), str(NODES), str(config), str(out)]
    return subprocess.Popen(
        [sys.executable, "-m", "tests.embedded_keras_trainer", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environment,
        cwd=Path(__file__).parent.parent,
    )


def wait_for_trainers(
    processes: list[subprocess.Popen[str]], configs: list[Path], outs: list[Path]
) -> list[str]:
    """Once the sentinel (``processes[0]``) listens, start the others; all their output."""
    sentinel = processes[0]
    assert sentinel.stdout is not None
    seen = []
    for line in sentinel.stdout:  # the sentinel listens before the others bootstrap from it
        seen.append(line)
        if "listening on" in line:
            break
    else:
        pytest.fail("".join(seen))
    processes += [start_trainer(n, configs[n], outs[n]) for n in range(1, NODES)]
    logs = [process.communicate(timeout=EMBEDDED_TIMEOUT_S)[0] for process in processes]
    return ["".join(seen) + logs[0], *logs[1:]]


@pytest.mark.process
def test_three_embedded_nodes_fit_one_keras_model(tmp_path: Path) -> None:
    """Three processes, each with its swarm node inside (no daemon anywhere), real TLS on
    loopback: bit-identical weights at the end, better than any node could do alone."""
    configs = write_configs(tmp_path)
    outs = [tmp_path / f"n{node}.npz" for node in range(NODES)]
    processes = [start_trainer(0, configs[0], outs[0])]
    try:
        logs = wait_for_trainers(processes, configs, outs)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for process, log in zip(processes, logs, strict=True):
        assert process.returncode == 0, log
    weights = [list(np.load(out).values()) for out in outs]
    for other in weights[1:]:
        for a, b in zip(weights[0], other, strict=True):
            assert a.dtype == b.dtype
            assert a.tobytes() == b.tobytes()
    assert "merged in" in logs[1]
    assert accuracy(weights[0]) > 0.8  # seen: 0.893; each node alone lacks a third of the digits
