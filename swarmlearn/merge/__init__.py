"""Merge engine: model state as named arrays, chunk manifests and merge methods (pure functions).

Not built yet: see the merge-engine issue.
"""
