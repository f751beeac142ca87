"""The swarm's ledger application (sans-IO): who is in the swarm, training contracts, sync
rounds, SWOP tasks, and the signed transactions that change them.
"""
