"""The Hugging Face Trainer callback without a swarm (loopback): HPE's argument checks, a sync
every ``syncFrequency`` Trainer steps, and which tensors travel in each ``hfMode``. The real
runs on three daemons are HPE's two examples in tests/test_hpe_examples.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from peft import LoraConfig, TaskType, get_peft_model, get_peft_model_state_dict
from transformers import Trainer, TrainingArguments

from swarmlearn.callback.core import SwarmError
from swarmlearn.callback.huggingface import SwarmCallback, adapter_bytes
from swarmlearn.merge import ModelState
from tests.hpe_standins import tiny_bert

# transformers and peft warn about their own deprecations and CPU settings; every callback
# here trains alone (conftest's loopback)
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning"
    ),
    pytest.mark.usefixtures("loopback"),
]


def lora(model: Any) -> Any:
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=32, bias="none")
    return get_peft_model(model, config)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hfMode": "lora"}, "hfMode must be one of full, peft, got 'lora'"),
        ({"hfMode": "peft"}, r"hfMode='peft' needs a PEFT model \(peft.get_peft_model"),
        ({"mlPlatform": "PYTORCH"}, "this is the Hugging Face callback"),
        ({"model": None}, "model must be the torch.nn.Module to train"),
        ({"metricFunction": "F1"}, r"'F1' is not a torchmetrics metric \(torchmetrics has: AUROC,"),
        ({"hfmode": "full"}, "unknown option 'hfmode'; did you mean 'hfMode'?"),
    ],
)
def test_bad_arguments_say_what_is_wrong(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"model": tiny_bert(5), **kwargs}
    with pytest.raises(SwarmError, match=message):
        SwarmCallback(syncFrequency=4, minPeers=2, **arguments)  # type: ignore[arg-type]


class CountingSyncs(SwarmCallback):
    syncs = 0

    def sync(self, *args: Any, **kwargs: Any) -> Any:
        self.syncs += 1
        return super().sync(*args, **kwargs)


def rows(count: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        {
            "input_ids": torch.randint(5, 15, (8,), generator=generator),
            "attention_mask": torch.ones(8, dtype=torch.long),
            "label": torch.tensor(i % 5),
        }
        for i in range(count)
    ]


@pytest.mark.slow
@pytest.mark.timeout(180)  # a Trainer on two busy cores: 10-50 s
def test_a_sync_every_sync_frequency_trainer_steps(tmp_path: Path) -> None:
    """40 rows, batches of 2, accumulating 2: 10 optimizer steps; a sync at the start, after
    steps 4 and 8, and the end's rounds (none in loopback)."""
    swarm = CountingSyncs(syncFrequency=4, minPeers=2, model=tiny_bert(5), totalEpochs=1)
    arguments = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        num_train_epochs=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    Trainer(model=swarm.model, args=arguments, train_dataset=rows(40), callbacks=[swarm]).train()
    assert swarm.syncs == 1 + 2
    assert swarm.epochsCompleted == 1
    assert swarm.isSwarmTrainingOver


def test_peft_mode_sends_and_loads_only_the_adapters() -> None:
    model = lora(tiny_bert(5))
    full = SwarmCallback(4, 2, model=model)
    peft = SwarmCallback(4, 2, model=model, hfMode="peft")
    adapters = get_peft_model_state_dict(model)
    sent = peft.state_now()
    assert list(sent) == list(adapters)
    assert all("lora_" in name or "classifier" in name for name in sent)
    assert sum(sent[name].nbytes for name in sent) == adapter_bytes(model) < 10_000
    assert sum(a.nbytes for a in full.state_now().values()) > 10 * adapter_bytes(model)
    base = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    merged = ModelState({name: np.asarray(sent[name]) + 1.0 for name in sent})
    peft.load(merged)
    for name, tensor in get_peft_model_state_dict(model).items():
        assert np.array_equal(tensor.numpy(), merged[name]), name
    for name, tensor in model.state_dict().items():
        if name in base and "classifier" not in name:
            assert torch.equal(tensor, base[name]), name  # the frozen base never changes


def test_the_compatibility_import_is_the_same_class() -> None:
    from swarmlearning.hf_transformers import SwarmCallback as HPECallback

    assert HPECallback is SwarmCallback
    callback = HPECallback(syncFrequency=16, minPeers=3, model=tiny_bert(5))
    assert callback.hfMode == "full"
    assert callback.loopback


def test_a_peft_model_without_hf_mode_is_told_what_peft_mode_saves(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """HPE's huggingface-peft example sets no hfMode: the whole state travels, as in HPE; the
    log says what hfMode='peft' would send instead."""
    model = lora(tiny_bert(5))
    with caplog.at_level("INFO", logger="SwarmCallback"):
        callback = SwarmCallback(syncFrequency=16, minPeers=2, model=model)
    assert callback.hfMode == "full"
    assert f"hfMode='peft' sends only the adapters ({adapter_bytes(model)} bytes)" in caplog.text


def test_loss_and_metric_on_dict_batches() -> None:
    """adsValData for a Trainer's model: a DataLoader of dict batches with ``label``; the
    loss and metric come from the model's logits (HPE's are a TODO)."""
    model = tiny_bert(5)
    val: torch.utils.data.DataLoader[Any] = torch.utils.data.DataLoader(rows(16), batch_size=8)  # type: ignore[arg-type]
    callback = SwarmCallback(
        16,
        2,
        model=model,
        adsValData=val,
        lossFunction="CrossEntropyLoss",
        metricFunction="Accuracy",
        metricFunctionArgs={"task": "multiclass", "num_classes": 5},
    )
    callback.loopback = False  # as with a node: evaluate before each sync
    loss, accuracy = callback.evaluate()
    batch = next(iter(torch.utils.data.DataLoader(rows(16), batch_size=16)))  # type: ignore[arg-type]
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = float(torch.nn.functional.cross_entropy(logits, batch["label"]))
    assert loss == pytest.approx(expected, rel=1e-5)
    assert accuracy == pytest.approx(float((logits.argmax(1) == batch["label"]).float().mean()))
