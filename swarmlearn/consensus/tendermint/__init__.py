"""Tendermint, sans-IO: the round state machine, the vote keeper, the node core around them
(mempool, application calls, WAL rules, catch-up, restart), the durable store, the ledger
over gossip, and the simulator scenarios that drive them.
"""
