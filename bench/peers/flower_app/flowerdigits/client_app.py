"""The ClientApp: load the global model, train the node's shard, send the weights back."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flowerdigits.task import new_model, settings, train

app = ClientApp()


def train_round(msg: Message, context: Context) -> Message:
    config = settings()
    model = new_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    node = int(context.node_config["partition-id"])
    examples = train(model, node, int(msg.content["config"]["server-round"]), config)
    reply = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"num-examples": examples}),
        }
    )
    return Message(content=reply, reply_to=msg)


app.train()(train_round)  # the decorator, spelled as a call (flwr is untyped for mypy here)
