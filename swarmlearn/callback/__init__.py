"""SwarmCallback: the framework-neutral core; ``swarmlearn.callback.pytorch`` is the PyTorch
adapter (importing it needs the ``torch`` extra), ``swarmlearn.callback.keras`` the Keras 3
one (the ``keras`` extra), ``swarmlearn.callback.huggingface`` the Hugging Face Trainer's (the
``hf`` extra) and ``swarmlearn.callback.lightning`` PyTorch Lightning's (the ``lightning``
extra); ``metricFunction`` needs the ``metrics`` extra (torchmetrics)."""

from swarmlearn.callback.core import DEFAULT_TRAINING_CONTRACT, SwarmCore, SwarmError, parse_options

__all__ = ["DEFAULT_TRAINING_CONTRACT", "SwarmCore", "SwarmError", "parse_options"]
