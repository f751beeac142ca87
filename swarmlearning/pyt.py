"""HPE Swarm Learning's import name for the PyTorch callback: ``from swarmlearning.pyt import
SwarmCallback`` runs unchanged on swarmlearn."""

from swarmlearn.callback.pytorch import SwarmCallback

__all__ = ["SwarmCallback"]
