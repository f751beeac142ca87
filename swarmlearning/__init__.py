"""Compatibility package for scripts written for HPE Swarm Learning.

``swarmlearning.pyt`` (PyTorch) and ``swarmlearning.tf`` (Keras) re-export ``SwarmCallback``.
"""
