"""Deterministic discrete-event simulator that drives the same sans-IO cores as real nodes.

Not built yet: see the simulator issue.
"""
