"""FedAvg on the swarmlearn demo's workload, as a Flower App (see bench/flower.py)."""
