"""HPE Swarm Learning's import name for the Keras callback: ``from swarmlearning.tf import
SwarmCallback`` runs unchanged on swarmlearn (Keras 3 on TensorFlow; TF1 graph mode is not
supported)."""

from swarmlearn.callback.keras import SwarmCallback

__all__ = ["SwarmCallback"]
