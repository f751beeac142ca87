"""SwarmCallback for the Hugging Face ``transformers.Trainer`` (HPE's ``hf_transformers``).

HPE's style, unchanged::

    from swarmlearning.hf_transformers import SwarmCallback
    swarm_callback = SwarmCallback(syncFrequency=16, minPeers=3, model=model)
    trainer = Trainer(model=model, args=training_args, ..., callbacks=[swarm_callback])
    trainer.train()

Each Trainer *step* (one optimizer update, after any gradient accumulation) counts as a batch:
a sync every ``syncFrequency`` steps. ``on_train_begin`` loads the swarm's latest model (a late
joiner) and syncs at once; ``on_train_end`` takes part in the last rounds and loads the final
swarm model (after the Trainer's own ``load_best_model_at_end``, which runs before it).

``hfMode``: ``"full"`` (the default, as in HPE) sends the whole ``state_dict``; ``"peft"``
sends only the adapters, ``peft.get_peft_model_state_dict(model)`` (LoRA's A and B matrices and
the ``modules_to_save`` such as a classification head), and loads the merged ones with
``set_peft_model_state_dict``: the frozen base model never travels, so every node must start
from the same base weights (the same pretrained checkpoint). ``peft`` is needed only for
``"peft"``. Loss and metric on ``adsValData`` (a DataLoader of dict batches with ``labels``)
work as in the PyTorch callback, where HPE's are a TODO.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from swarmlearn.callback.core import DEFAULT_TRAINING_CONTRACT, SwarmError, parse_options
from swarmlearn.callback.pytorch import TorchSwarm, load_tensors, tensors_state
from swarmlearn.merge import ModelState

HF_MODES = ("full", "peft")
PLATFORM_OPTIONS = (
    "model",
    "lossFunction",
    "lossFunctionArgs",
    "metricFunction",
    "metricFunctionArgs",
    "hfMode",
)


class SwarmCallback(TorchSwarm, TrainerCallback):
    def __init__(
        self,
        syncFrequency: Any = None,
        minPeers: Any = None,
        trainingContract: str = DEFAULT_TRAINING_CONTRACT,
        **kwargs: Any,
    ) -> None:
        options = parse_options(syncFrequency, minPeers, trainingContract, kwargs, PLATFORM_OPTIONS)
        platform = kwargs.get("ml_platform", kwargs.get("mlPlatform", "HF_TRANSFORMER"))
        if platform != "HF_TRANSFORMER":
            raise SwarmError(
                f"mlPlatform {platform!r}: this is the Hugging Face callback (HF_TRANSFORMER)"
            )
        mode = kwargs.get("hfMode", "full")
        if mode not in HF_MODES:
            raise SwarmError(f"hfMode must be one of {', '.join(HF_MODES)}, got {mode!r}")
        self.hfMode = mode
        if mode == "peft":
            _peft_model(kwargs.get("model"))
        TrainerCallback.__init__(self)
        TorchSwarm.__init__(self, options, kwargs.get("model"))
        if "hfMode" not in kwargs and _is_peft(self.model):
            full = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
            self.logger.info(
                f"a PEFT model in hfMode='full': each round sends the whole state_dict"
                f" ({full} bytes); hfMode='peft' sends only the adapters"
                f" ({adapter_bytes(self.model)} bytes)"
            )

    # ------------------------------------------------------------ which tensors travel

    def state_now(self) -> ModelState:
        if self.hfMode == "full":
            return super().state_now()
        from peft import get_peft_model_state_dict

        return tensors_state(get_peft_model_state_dict(self.model))

    def load(self, state: ModelState) -> None:
        if self.hfMode == "full":
            super().load(state)
            return
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        tensors = {
            name: tensor.clone() for name, tensor in get_peft_model_state_dict(self.model).items()
        }
        load_tensors(tensors, state)
        result = set_peft_model_state_dict(self.model, tensors)
        unexpected = list(getattr(result, "unexpected_keys", []))
        if unexpected:
            raise SwarmError(f"the merged adapters have tensors this model lacks: {unexpected[:3]}")

    # ------------------------------------------------------------ TrainerCallback's hooks

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.sync_now()

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.batch_done():
            self.sync_now()

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.epoch_done()

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.finish_now()


def _peft_model(model: Any) -> None:
    try:
        from peft import PeftModel
    except ImportError:
        raise SwarmError("hfMode='peft' needs peft: pip install 'swarmlearn[hf]'") from None
    if not isinstance(model, PeftModel):
        raise SwarmError(
            "hfMode='peft' needs a PEFT model (peft.get_peft_model(model, config)),"
            f" got {type(model).__name__}"
        )


def _is_peft(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def adapter_bytes(model: torch.nn.Module) -> int:
    """What one round sends in ``hfMode='peft'``: the adapters' bytes."""
    from peft import get_peft_model_state_dict

    return sum(t.numel() * t.element_size() for t in get_peft_model_state_dict(model).values())
