"""BFT ledger of swarm metadata: Tendermint core (sans-IO), application, block store and WAL.

Not built yet: see the consensus issue.
"""
