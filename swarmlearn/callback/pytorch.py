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

from collections.abc import Mapping
from types import TracebackType
from typing import Any, cast

import numpy as np
import torch

from swarmlearn.callback.core import (
    DEFAULT_TRAINING_CONTRACT,
    ModelHooks,
    Options,
    SwarmCore,
    SwarmError,
    parse_options,
)
from swarmlearn.callback.torch_eval import evaluate, loss_function, metric_function
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
    return tensors_state(model.state_dict())


def tensors_state(tensors: Mapping[str, torch.Tensor]) -> ModelState:
    """Named tensors as numpy arrays (views of CPU tensors where possible)."""
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    bfloat16 = []
    for name, tensor in tensors.items():
        value = tensor.detach()
        if value.dtype == torch.bfloat16:
            arrays[name] = value.cpu().view(torch.int16).numpy().view(np.uint16)
            bfloat16.append(name)
        else:
            arrays[name] = value.cpu().numpy()
    return ModelState(arrays, bfloat16=bfloat16)


def load_state(model: torch.nn.Module, state: ModelState) -> None:
    """Copy merged arrays into the model's own tensors (same device, same dtype)."""
    load_tensors(model.state_dict(), state)


def load_tensors(targets: Mapping[str, torch.Tensor], state: ModelState) -> None:
    """Copy merged arrays into the named tensors, in place (same device, same dtype)."""
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


class TorchSwarm(SwarmCore):
    """What the PyTorch-based callbacks share: the model, HPE's loss and metric on adsValData,
    a sync that loads the swarm's model, and the end of training. ``state_now`` and ``load``
    say which tensors travel (the whole state_dict here; PEFT's adapters in the Hugging Face
    callback)."""

    def __init__(self, options: Options, model: Any, *, model_later: bool = False) -> None:
        """``model_later``: None is allowed now, the model is set before the first sync."""
        if not isinstance(model, torch.nn.Module) and not (model_later and model is None):
            raise SwarmError("model must be the torch.nn.Module to train (model=...)")
        self.model: torch.nn.Module = cast(torch.nn.Module, model)  # None until set, if later
        extra = options.extra
        self.loss_function = loss_function(extra.get("lossFunction"), extra.get("lossFunctionArgs"))
        self.metric = metric_function(extra.get("metricFunction"), extra.get("metricFunctionArgs"))
        if options.val_data is not None and not isinstance(
            options.val_data, torch.utils.data.DataLoader
        ):
            raise SwarmError("adsValData must be a torch.utils.data.DataLoader")
        super().__init__(options)

    def state_now(self) -> ModelState:
        return state_of(self.model)

    def load(self, state: ModelState) -> None:
        load_state(self.model, state)

    def hooks(self) -> ModelHooks:
        return ModelHooks(self.state_now, self.load, self.evaluate)

    def sync_now(self) -> None:
        self.sync_model(self.hooks())

    def finish_now(self) -> None:
        """This node's training is over: the final rounds, then the swarm's final model."""
        self.finish_model(self.hooks())

    def evaluate(self) -> tuple[float | None, float | None]:
        """Loss and metric on adsValData, for PERFDATA and adaptive sync."""
        loader = self.options.val_data
        if loader is None or self.loopback:
            return None, None
        loss, metric = evaluate(self.model, loader, self.loss_function, self.metric)
        figures = [] if loss is None else [f"loss {loss:.4f}"]
        if metric is not None:
            figures.append(f"{self.options.extra.get('metricFunction')} {metric:.4f}")
        if figures:
            self.logger.info(f"adsValData: {', '.join(figures)}")
        return loss, metric


class SwarmCallback(TorchSwarm):
    def __init__(
        self,
        syncFrequency: Any = None,
        minPeers: Any = None,
        trainingContract: str = DEFAULT_TRAINING_CONTRACT,
        **kwargs: Any,
    ) -> None:
        options = parse_options(syncFrequency, minPeers, trainingContract, kwargs, PLATFORM_OPTIONS)
        super().__init__(options, kwargs.get("model"))

    # ------------------------------------------------------------ HPE's hooks

    def on_train_begin(self) -> None:
        self.sync_now()

    def on_batch_end(self, batch: Any = None) -> None:
        if self.batch_done():
            self.sync_now()

    def on_epoch_end(self, epoch: Any = None) -> None:
        self.epoch_done()

    def on_train_end(self) -> None:
        self.finish_now()

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
