"""The swarm-node: its cores composed (``core``), the trio driver, the node that runs them on
disk and network (``node``), its connections, the daemon and its configuration.
"""
