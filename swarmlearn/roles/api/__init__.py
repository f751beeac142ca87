"""The node API: HTTP + JSON over mutual TLS and ``/metrics``, the request messages nodes and
clients exchange, and read-only views of the ledger.
"""
