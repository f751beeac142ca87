"""Compatibility package for scripts written for HPE Swarm Learning.

``swarmlearning.pyt`` (PyTorch), ``swarmlearning.tf`` (Keras) and
``swarmlearning.hf_transformers`` (the Hugging Face Trainer) re-export ``SwarmCallback``.
"""
