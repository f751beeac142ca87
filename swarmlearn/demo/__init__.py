"""`swarmlearn demo`: a swarm of real nodes on this machine training sklearn's digits."""
