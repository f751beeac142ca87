"""The PyTorch Lightning callback: the PyTorch callback's options and checks, a sync every
``syncFrequency`` training batches with the LightningModule as the model, and real training
on two swarm-node daemons that ends bit-identical."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import lightning
import pytest
import torch

from swarmlearn.callback.core import SwarmError
from swarmlearn.callback.lightning import SwarmCallback
from tests.test_callback_torch import digits_split, net, run_scripts, two_daemons

# Lightning's advice on CPU runs (workers, logging) comes as warnings
pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning"
)


class Digits(lightning.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(node: int) -> torch.utils.data.DataLoader[Any]:
    x, y = digits_split(node, 2)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)


def fit(module: Digits, swarm: SwarmCallback, node: int, epochs: int = 2) -> None:
    trainer = lightning.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[swarm],
    )
    trainer.fit(module, loader(node))


class CountingSyncs(SwarmCallback):
    syncs = 0

    def sync(self, *args: Any, **kwargs: Any) -> Any:
        self.syncs += 1
        return super().sync(*args, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metricFunction": "F1Scor"}, "'F1Scor' is not a torchmetrics metric; did you mean"),
        ({"lossFunction": "CrossEntropy"}, "lossFunction 'CrossEntropy' is not a torch.nn loss"),
        ({"model": "net"}, "model must be the torch.nn.Module to train"),
        ({"mlPlatform": "KERAS"}, "this is the Lightning callback"),
        ({"adsValData": [1]}, "adsValData must be a torch.utils.data.DataLoader"),
    ],
)
def test_bad_arguments_say_what_is_wrong(
    monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, object], message: str
) -> None:
    monkeypatch.setenv("SWARM_LOOPBACK", "True")
    with pytest.raises(SwarmError, match=message):
        SwarmCallback(syncFrequency=4, minPeers=2, **kwargs)  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.timeout(180)  # a Trainer on two busy cores: 10-50 s
def test_a_sync_every_sync_frequency_batches_on_the_module(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """~28 batches an epoch, 2 epochs, a sync every 10: the first, then after batches 10, 20,
    ..., 50; the module being fit is the model, and the validation loss and F1 come from it."""
    monkeypatch.setenv("SWARM_LOOPBACK", "True")
    module = Digits()
    x, y = digits_split(1, 2)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:64], y[:64]), 32)
    swarm = CountingSyncs(
        syncFrequency=10,
        minPeers=2,
        adsValData=val,
        lossFunction="CrossEntropyLoss",
        metricFunction="F1Score",
        metricFunctionArgs={"task": "multiclass", "num_classes": 10},
        totalEpochs=2,
    )
    fit(module, swarm, 0)
    batches = len(loader(0)) * 2
    assert swarm.syncs == 1 + batches // 10
    assert swarm.model is module
    assert swarm.epochsCompleted == 2
    assert swarm.isSwarmTrainingOver
    swarm.loopback = False  # as with a node: the figures PERFDATA gets
    loss, f1 = swarm.evaluate()
    assert loss is not None
    assert f1 is not None
    assert loss > 0.0  # high: the module has not seen node 1's digits
    assert 0.0 <= f1 <= 1.0


@pytest.mark.process
def test_two_daemons_two_lightning_trainers_end_identical(tmp_path: Path) -> None:
    out: dict[int, dict[str, torch.Tensor]] = {}
    rounds: dict[int, int] = {}

    def script(socket: Path, node: int) -> None:
        module = Digits()
        swarm = SwarmCallback(syncFrequency=20, minPeers=2, nodeSocket=str(socket))
        fit(module, swarm, node)
        out[node] = {k: v.clone() for k, v in module.state_dict().items()}
        rounds[node] = swarm.rounds_done

    with two_daemons(tmp_path) as data:
        run_scripts(
            *(threading.Thread(target=script, args=(data[i] / "sl.sock", i)) for i in range(2))
        )
    assert sorted(out) == [0, 1]
    for name, tensor in out[0].items():
        assert torch.equal(tensor, out[1][name]), name  # BatchNorm's buffers included
    assert rounds[0] == rounds[1] >= 1 + 2  # the first, one every 20 of ~56 batches, the end
