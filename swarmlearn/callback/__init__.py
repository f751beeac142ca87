"""SwarmCallback core and its PyTorch and Keras adapters.

Not built yet: see the callback issue.
"""
