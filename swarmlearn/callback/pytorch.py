"""SwarmCallback for PyTorch: HPE's four hooks, or a context manager and ``step()``.

HPE's style, unchanged::

    swarmCallback = SwarmCallback(syncFrequency=128, minPeers=3, model=model,
                                  lossFunction="CrossEntropyLoss", adsValData=val_loader)
    swarmCallback.on_train_begin()
    for epoch in range(epochs):
        for x, y in loader:
            ...; optimizer.step()
            swarmCallback.on_batch_end()
        swarmCallback.on_epoch_end(epoch)
    swarmCallback.on_train_end()

Ours, the same thing::

    with SwarmCallback(syncFrequency=128, minPeers=3, model=model) as swarm:
        for epoch in range(epochs):
            for x, y in loader:
                ...; optimizer.step()
                swarm.step()

The whole ``state_dict`` travels (parameters and buffers such as BatchNorm's running stats
and ``num_batches_tracked``), every dtype kept (integer buffers are not cast to float, unlike
HPE; bfloat16 by its bit pattern), and merged weights are copied back into the model's own
tensors, so they stay on their device (CUDA tensors come back on CUDA).
"""

from __future__ import annotations

import time
from dataclasses import replace
from functools import partial
from types import TracebackType
from typing import Any

import numpy as np
import torch

from swarmlearn.callback.core import DEFAULT_TRAINING_CONTRACT, SwarmCore, SwarmError, parse_options
from swarmlearn.merge import ModelState

PLATFORM_OPTIONS = (
    "model",
    "lossFunction",
    "lossFunctionArgs",
    "metricFunction",
    "metricFunctionArgs",
)


def state_of(model: torch.nn.Module) -> ModelState:
    """The model's whole state_dict as numpy arrays (views of CPU tensors where possible)."""
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    bfloat16 = []
    for name, tensor in model.state_dict().items():
        value = tensor.detach()
        if value.dtype == torch.bfloat16:
            arrays[name] = value.cpu().view(torch.int16).numpy().view(np.uint16)
            bfloat16.append(name)
        else:
            arrays[name] = value.cpu().numpy()
    return ModelState(arrays, bfloat16=bfloat16)


def load_state(model: torch.nn.Module, state: ModelState) -> None:
    """Copy merged arrays into the model's own tensors (same device, same dtype)."""
    targets = model.state_dict()
    with torch.no_grad():
        for name, target in targets.items():
            array = np.ascontiguousarray(state[name])
            if not array.flags.writeable:  # torch wants a writable array; merged weights are
                array = array.copy()
            if target.dtype == torch.bfloat16:
                source = torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
            else:
                source = torch.from_numpy(array)
            target.copy_(source.reshape(target.shape))


class SwarmCallback(SwarmCore):
    def __init__(
        self,
        syncFrequency: Any = None,
        minPeers: Any = None,
        trainingContract: str = DEFAULT_TRAINING_CONTRACT,
        **kwargs: Any,
    ) -> None:
        options = parse_options(syncFrequency, minPeers, trainingContract, kwargs, PLATFORM_OPTIONS)
        model = kwargs.get("model")
        if not isinstance(model, torch.nn.Module):
            raise SwarmError("model must be the torch.nn.Module to train (model=...)")
        self.model = model
        self.loss_function = _loss(kwargs.get("lossFunction"), kwargs.get("lossFunctionArgs"))
        self.metric = kwargs.get("metricFunction")
        if self.metric not in (None, "Accuracy"):
            raise SwarmError(f"metricFunction {self.metric!r}: only 'Accuracy' is built in")
        if options.val_data is not None and not isinstance(
            options.val_data, torch.utils.data.DataLoader
        ):
            raise SwarmError("adsValData must be a torch.utils.data.DataLoader")
        super().__init__(options)

    # ------------------------------------------------------------ HPE's hooks

    def on_train_begin(self) -> None:
        self._sync()

    def on_batch_end(self, batch: Any = None) -> None:
        if self.batch_done():
            self._sync()

    def on_epoch_end(self, epoch: Any = None) -> None:
        self.epoch_done()

    def on_train_end(self) -> None:
        loss, metric = self._evaluate()
        merged = self.finish(state_of(self.model), loss=loss, metric=metric)
        if merged is not None:
            load_state(self.model, merged)
            self.report_final(*self._evaluate())  # PERFDATA of the final model
        self.close()

    # ------------------------------------------------------------ the simpler form

    def __enter__(self) -> SwarmCallback:
        self.on_train_begin()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if kind is None:
            self.on_train_end()
        else:
            self.close()

    def step(self) -> None:
        """Call after each optimizer step (``on_batch_end``)."""
        self.on_batch_end()

    # ------------------------------------------------------------ internals

    def _sync(self) -> None:
        latest = self.latest_once(partial(state_of, self.model))  # once: a late joiner
        if latest is not None:
            load_state(self.model, latest)
        loss, metric = self._evaluate()
        merged = self.sync(state_of(self.model), loss=loss, metric=metric)
        if merged is not None:
            started = time.perf_counter()
            load_state(self.model, merged)
            self.last_timing = replace(self.last_timing, load_s=time.perf_counter() - started)

    def _evaluate(self) -> tuple[float | None, float | None]:
        """Loss and accuracy on adsValData, for PERFDATA and adaptive sync."""
        loader = self.options.val_data
        if loader is None or self.loss_function is None or self.loopback:
            return None, None
        was_training = self.model.training
        self.model.eval()
        total_loss, correct, count = 0.0, 0, 0
        with torch.no_grad():
            for x, y in loader:
                device = next(self.model.parameters()).device
                out = self.model(x.to(device))
                total_loss += float(self.loss_function(out, y.to(device))) * len(y)
                correct += int((out.argmax(dim=1).cpu() == y).sum())
                count += len(y)
        self.model.train(was_training)
        return (total_loss / max(count, 1), correct / max(count, 1) if self.metric else None)


def _loss(name: Any, args: Any) -> Any:
    if name is None:
        return None
    factory = getattr(torch.nn, str(name), None)
    if factory is None or not isinstance(factory, type) or not issubclass(factory, torch.nn.Module):
        raise SwarmError(f"lossFunction {name!r} is not a torch.nn loss (e.g. 'CrossEntropyLoss')")
    return factory(**(args or {}))
