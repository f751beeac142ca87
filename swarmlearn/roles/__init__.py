"""The trio drivers: node composition, SN, SL, sentinel, SWOP, SWCI and the swarm-node daemon."""
