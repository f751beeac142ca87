"""HPE Swarm Learning's import name for the Hugging Face Trainer callback: ``from
swarmlearning.hf_transformers import SwarmCallback`` runs unchanged on swarmlearn (``hfMode``
``"full"`` or ``"peft"``; needs the ``hf`` extra)."""

from swarmlearn.callback.huggingface import SwarmCallback

__all__ = ["SwarmCallback"]
