"""The swarm's roles: ``node/`` (the swarm-node: SN validator, sentinel, its driver and
network), ``sl/`` (the SL side of a sync round, sans-IO), ``local/`` (a training process's
endpoint at its node), ``api/`` (the node API and its views), ``swop/`` (SWOP's task runner).
"""
