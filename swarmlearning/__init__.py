"""Compatibility package for scripts written for HPE Swarm Learning.

``swarmlearning.pyt`` and ``swarmlearning.tf`` will re-export ``SwarmCallback``
once the callback issue lands.
"""
