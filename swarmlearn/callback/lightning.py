"""SwarmCallback for PyTorch Lightning: the same options and behaviour as the PyTorch one.

::

    from swarmlearn.callback.lightning import SwarmCallback
    swarm = SwarmCallback(syncFrequency=128, minPeers=3,
                          lossFunction="CrossEntropyLoss", adsValData=val_loader,
                          metricFunction="F1Score",
                          metricFunctionArgs={"task": "multiclass", "num_classes": 10})
    lightning.Trainer(max_epochs=5, callbacks=[swarm]).fit(module, train_loader)

``model`` is optional: the LightningModule being fit is the model (give ``model=`` to sync one
submodule only). Each training batch counts (``on_train_batch_end``): a sync every
``syncFrequency`` batches. ``on_train_start`` loads the swarm's latest model (a late joiner)
and syncs at once, so every node starts from the same weights; ``on_train_end`` takes part in
the last rounds (``checkinModelOnTrainEnd``) and loads the final swarm model. The whole
``state_dict`` travels, buffers included, every dtype kept, as in the PyTorch callback. Needs
the ``lightning`` extra (``lightning.pytorch``).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from swarmlearn.callback.core import DEFAULT_TRAINING_CONTRACT, SwarmError, parse_options
from swarmlearn.callback.pytorch import TorchSwarm

PLATFORM_OPTIONS = (
    "model",
    "lossFunction",
    "lossFunctionArgs",
    "metricFunction",
    "metricFunctionArgs",
)


class SwarmCallback(TorchSwarm, Callback):
    def __init__(
        self,
        syncFrequency: Any = None,
        minPeers: Any = None,
        trainingContract: str = DEFAULT_TRAINING_CONTRACT,
        **kwargs: Any,
    ) -> None:
        options = parse_options(syncFrequency, minPeers, trainingContract, kwargs, PLATFORM_OPTIONS)
        platform = kwargs.get("ml_platform", kwargs.get("mlPlatform", "PYTORCH"))
        if platform not in ("PYTORCH", "LIGHTNING"):
            raise SwarmError(f"mlPlatform {platform!r}: this is the Lightning callback (PYTORCH)")
        TorchSwarm.__init__(self, options, kwargs.get("model"), model_later=True)

    # ------------------------------------------------------------ Lightning's hooks

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.model is None:
            self.model = pl_module
        self.sync_now()

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.batch_done():
            self.sync_now()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.epoch_done()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.finish_now()

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        self.close()
