"""SwarmCallback for Keras 3 (TensorFlow backend): a real ``keras.callbacks.Callback``.

HPE's style, unchanged::

    swarmCallback = SwarmCallback(syncFrequency=128, minPeers=3, adsValData=(x_val, y_val),
                                  adsValBatchSize=64)
    model.fit(x, y, epochs=5, callbacks=[swarmCallback])

``fit`` drives the hooks: ``on_train_begin`` syncs once so every node starts from the same
weights; ``on_train_batch_end`` (Keras's default calls ``on_batch_end``) counts batches and
syncs every ``syncFrequency`` of them (with ``steps_per_execution=N`` a call counts N);
``on_epoch_end`` counts epochs for progress and ETA; ``on_train_end`` is the core's
``finish()``: this node keeps taking part until every node has finished, then the last
merged weights are loaded into the model. Once the swarm training is over
(``isSwarmTrainingOver``), a hook sets ``model.stop_training = True``, so ``fit`` stops
(a callback is used for one ``fit``; a second one stops at its first batch).

What travels: ``model.weights``, every layer's, trainable and not (BatchNormalization's
moving mean and variance too), each under its variable path with the model's own name
stripped (``dense/kernel``), de-duplicated with ``#1``, ``#2`` in order; dtypes kept
(bfloat16 by its bit pattern). Names depend on layer names, which Keras numbers per thread
(``dense``, ``dense_1``, ...): every node must build its model the same way.

Loss and metric for PERFDATA and adaptive sync come from ``model.evaluate`` on
``adsValData`` (an ``(x, y)`` or ``(x, y, sample_weight)`` tuple, batched by
``adsValBatchSize``, or a ``tf.data.Dataset`` / ``keras.utils.PyDataset``); the compiled
metrics' running state is put back afterwards, so ``fit``'s own figures are not disturbed.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import keras
import ml_dtypes
import numpy as np
import tensorflow as tf

from swarmlearn.callback.core import (
    DEFAULT_TRAINING_CONTRACT,
    ModelHooks,
    SwarmCore,
    SwarmError,
    parse_options,
)
from swarmlearn.merge import ModelState

# HPE's TF1 graph mode hooks variables through ``tf`` and ``sess``; named here so that a
# script passing them is told why they are refused rather than "unknown option".
PLATFORM_OPTIONS = ("tf", "sess")
PYTORCH_OPTIONS = (
    "model",
    "lossFunction",
    "lossFunctionArgs",
    "metricFunction",
    "metricFunctionArgs",
)
TF1_MESSAGE = (
    "TF1 graph mode (mlPlatform='TF' with tf= and sess=) is not supported: train a Keras model"
    " with model.fit(..., callbacks=[swarmCallback])"
)


def weight_names(model: keras.Model) -> list[str]:
    """A unique, stable name for each of ``model.weights``, in order."""
    prefix = f"{model.name}/"
    names: list[str] = []
    used: set[str] = set()
    for variable in model.weights:
        path = str(variable.path)
        base = path.removeprefix(prefix)
        name, count = base, 0
        while name in used:
            count += 1
            name = f"{base}#{count}"
        used.add(name)
        names.append(name)
    return names


def state_of(model: keras.Model) -> ModelState:
    """Every weight of ``model`` as a numpy array, no cast and no copy: views of the tensors
    read from the variables (TensorFlow copies a variable on write while a read is alive, so
    the views keep the values of the moment they were taken)."""
    if not model.weights:
        raise SwarmError("the model has no weights yet: build it (keras.Input or model.build)")
    arrays: list[tuple[str, np.ndarray[Any, Any]]] = []
    bfloat16: list[str] = []
    for name, variable in zip(weight_names(model), model.weights, strict=True):
        array = np.asarray(tf.convert_to_tensor(variable))  # a read-only view, no copy
        if array.dtype == ml_dtypes.bfloat16:
            array = array.view(np.uint16)
            bfloat16.append(name)
        arrays.append((name, array))
    try:
        return ModelState(arrays, bfloat16=bfloat16)
    except ValueError as error:
        raise SwarmError(f"Keras weights cannot travel: {error}") from None


def load_state(model: keras.Model, state: ModelState) -> None:
    """Assign merged arrays to the model's own variables (same dtypes and shapes)."""
    for name, variable in zip(weight_names(model), model.weights, strict=True):
        if name not in state:
            raise SwarmError(
                f"the merged model has no weight {name!r}: every node must build the same model"
                " (the same layers, with the same names)"
            )
        array = state[name]
        if state.dtype(name) == "bfloat16":
            array = array.view(ml_dtypes.bfloat16)
        variable.assign(array.reshape(tuple(variable.shape)))


class SwarmCallback(keras.callbacks.Callback, SwarmCore):  # type: ignore[misc]
    """HPE's SwarmCallback for ``model.fit(..., callbacks=[...])``; one per ``fit``."""

    def __init__(
        self,
        syncFrequency: Any = None,
        minPeers: Any = None,
        trainingContract: str = DEFAULT_TRAINING_CONTRACT,
        **kwargs: Any,
    ) -> None:
        if keras.backend.backend() != "tensorflow":
            raise SwarmError(
                f"the Keras SwarmCallback needs the TensorFlow backend, Keras runs on"
                f" {keras.backend.backend()!r}: set KERAS_BACKEND=tensorflow"
            )
        _refuse_foreign_options(kwargs)
        options = parse_options(syncFrequency, minPeers, trainingContract, kwargs, PLATFORM_OPTIONS)
        _check_val_data(options.val_data)
        keras.callbacks.Callback.__init__(self)
        SwarmCore.__init__(self, options)
        self.valData = options.val_data
        self.valBatchSize = options.val_batch_size
        self._batches_in_epoch = 0

    # ------------------------------------------------------------ the hooks fit calls

    def on_train_begin(self, logs: Any = None) -> None:
        if self._stop_if_over():
            return
        self._batches_in_epoch = 0
        self._sync()
        self._stop_if_over()

    def on_epoch_begin(self, epoch: Any, logs: Any = None) -> None:
        self._batches_in_epoch = 0

    def on_batch_end(self, batch: Any = None, logs: Any = None) -> None:
        if self._stop_if_over():
            return
        # fit passes the index of the last batch run: more than one with steps_per_execution
        done = 1 if batch is None else max(int(batch) + 1 - self._batches_in_epoch, 1)
        self._batches_in_epoch += done
        due = False
        for _ in range(done):
            due = self.batch_done() or due
        if due:
            self._sync()
            self._stop_if_over()

    def on_epoch_end(self, epoch: Any = None, logs: Any = None) -> None:
        if not self.isSwarmTrainingOver:
            self.epoch_done()

    def on_train_end(self, logs: Any = None) -> None:
        if self.isSwarmTrainingOver:
            return
        self.finish_model(self._hooks())

    # ------------------------------------------------------------ internals

    def _stop_if_over(self) -> bool:
        if self.isSwarmTrainingOver and self.model is not None:
            self.model.stop_training = True
        return bool(self.isSwarmTrainingOver)

    def _hooks(self) -> ModelHooks:
        return ModelHooks(
            partial(state_of, self.model), partial(load_state, self.model), self._evaluate
        )

    def _sync(self) -> None:
        self.sync_model(self._hooks())

    def _evaluate(self) -> tuple[float | None, float | None]:
        """Loss and first compiled metric on adsValData, for PERFDATA and adaptive sync."""
        data = self.valData
        if data is None or self.loopback:
            return None, None
        model = self.model
        running = [(v, v.numpy()) for metric in model.metrics for v in metric.variables]
        if isinstance(data, tuple):
            results = model.evaluate(
                data[0],
                data[1],
                sample_weight=data[2] if len(data) == 3 else None,
                batch_size=self.valBatchSize,
                verbose=0,
                return_dict=True,
            )
        else:
            results = model.evaluate(data, verbose=0, return_dict=True)
        for variable, value in running:  # fit's running loss and metrics, as they were
            variable.assign(value)
        loss = results.get("loss")
        metric = next((v for k, v in results.items() if k != "loss"), None)
        return (
            None if loss is None else float(loss),
            None if metric is None else float(metric),
        )


def _refuse_foreign_options(kwargs: dict[str, Any]) -> None:
    """PyTorch's and TF1's options get a line saying what Keras does instead."""
    for key in PYTORCH_OPTIONS:
        if key in kwargs:
            raise SwarmError(
                f"{key} is a PyTorch option: Keras takes the model from model.fit and the"
                " loss and metrics from model.compile"
            )
    platform = kwargs.get("mlPlatform", kwargs.get("ml_platform"))
    if platform is not None and str(platform).upper() != "KERAS":
        if str(platform).upper() == "TF":
            raise SwarmError(TF1_MESSAGE)
        raise SwarmError(f"mlPlatform {platform!r}: this is the Keras callback, use 'KERAS'")
    if "tf" in kwargs or "sess" in kwargs:
        raise SwarmError(TF1_MESSAGE)


def _check_val_data(data: Any) -> None:
    if data is None or isinstance(data, tf.data.Dataset | keras.utils.PyDataset):
        return
    if isinstance(data, tuple) and len(data) in (2, 3):
        return
    raise SwarmError(
        "adsValData must be an (x, y) or (x, y, sample_weight) tuple, a tf.data.Dataset or a"
        f" keras.utils.PyDataset, got {type(data).__name__}"
    )
