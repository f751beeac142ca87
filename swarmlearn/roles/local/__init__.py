"""A node's local endpoint: how a training process on the same host hands its weights over
(Unix socket, shared-memory handover) and how the node keeps its trainers' sessions.
"""
