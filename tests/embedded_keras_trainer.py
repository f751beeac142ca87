"""A Keras training script for the embedded-mode test: ``python -m tests.embedded_keras_trainer
NODE NODES CONFIG OUT``. It fits the test network on its label-skewed digits with the swarm
node embedded in this process (``nodeConfig``) and saves the final weights to OUT (.npz)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

from swarmlearn.callback.keras import SwarmCallback
from tests.keras_helpers import digits, net


def main() -> None:
    node, nodes, config, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    x, y = digits(node, nodes)
    model = net()
    swarm = SwarmCallback(syncFrequency=10, minPeers=nodes, nodeConfig=config, totalEpochs=3)
    model.fit(x, y, batch_size=32, epochs=3, verbose=0, shuffle=False, callbacks=[swarm])
    np.savez(out, *model.get_weights())
    print(f"node {node}: {swarm.rounds_done} rounds", flush=True)


if __name__ == "__main__":
    main()
