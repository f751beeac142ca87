"""The ServerApp: FedAvg over every node for N rounds, the global model scored each round.

It writes the result (accuracy per round, final accuracy, time spent in rounds) as JSON to the
path in the bench's settings; bench/peers/flower_run.py waits for that file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from flowerdigits.task import accuracy, new_model, settings

app = ServerApp()


def run_rounds(grid: Grid, context: Context) -> None:
    config = settings()
    model = new_model()
    scores: list[float] = []

    def score(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        scores.append(accuracy(model))
        return MetricRecord({"accuracy": scores[-1]})

    strategy = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=config.nodes,
        min_available_nodes=config.nodes,
    )
    started = time.perf_counter()
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(new_model().state_dict()),
        num_rounds=config.rounds,
        evaluate_fn=score,
    )
    result = {"rounds_s": time.perf_counter() - started, "accuracy_per_round": scores[1:]}
    Path(config.result).write_text(json.dumps({**result, "final_accuracy": scores[-1]}))


app.main()(run_rounds)
