"""The swarm's BFT ledger: ``tendermint/``, the consensus engine (sans-IO state machine, vote
keeper, WAL, block store, catch-up, the ledger over gossip), and ``ledger/``, the swarm's
application on it (members, training contracts, sync rounds, tasks, their transactions).
"""
