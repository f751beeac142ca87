"""SwarmCallback: the framework-neutral core; ``swarmlearn.callback.pytorch`` is the PyTorch
adapter (importing it needs the ``torch`` extra), ``swarmlearn.callback.keras`` the Keras 3
one (the ``keras`` extra)."""

from swarmlearn.callback.core import DEFAULT_TRAINING_CONTRACT, SwarmCore, SwarmError, parse_options

__all__ = ["DEFAULT_TRAINING_CONTRACT", "SwarmCore", "SwarmError", "parse_options"]
