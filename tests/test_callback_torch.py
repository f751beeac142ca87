"""The PyTorch SwarmCallback: HPE's argument checks, state in and out, loopback, and real
training on two swarm-node daemons (one script in HPE's exact style, one with ours)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from swarmlearn.callback.core import SwarmError
from swarmlearn.callback.pytorch import SwarmCallback, load_state, state_of
from swarmlearn.demo.swarm import LocalSwarm


def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"syncFrequency": 0}, "syncFrequency must be >= 1, got 0"),
        ({"minPeers": "many"}, "minPeers must be an integer, got 'many'"),
        ({"nodeWeightage": 101}, r"nodeWeightage must be 1\.\.100, got 101"),
        (
            {"mergeMethod": "average"},
            "merge method 'average' is not one of: coordmedian, geomedian,",
        ),
        ({"mergeMethod": "krum:f=1"}, "merge method 'krum:f=1': 'f=1' is not param=value"),
        (
            {"checkinModelOnTrainEnd": "later"},
            "checkinModelOnTrainEnd must be one of inactive, snapshot, active",
        ),
        ({"useAdaptiveSync": True}, "useAdaptiveSync needs adsValData"),
        ({"syncFrequncy2": 1}, "unknown option 'syncFrequncy2'"),
        ({"nodeWeightge": 3}, "unknown option 'nodeWeightge'; did you mean 'nodeWeightage'?"),
        ({"model": None}, r"model must be the torch\.nn\.Module to train"),
        ({"lossFunction": "CrossEntropy"}, "lossFunction 'CrossEntropy' is not a torch.nn loss"),
        (
            {"lossFunction": "CrossEntropyLoss", "lossFunctionArgs": {"reduce_it": "sum"}},
            "lossFunctionArgs for CrossEntropyLoss: unknown argument 'reduce_it'; did you mean",
        ),
        (
            {"metricFunction": "F1score"},
            "'F1score' is not a torchmetrics metric; did you mean 'F1Sc",
        ),
        (
            {"metricFunction": "F1Score", "metricFunctionArgs": {"task": "multiclass"}},
            "metricFunction='F1Score' with metricFunctionArgs {'task': 'multiclass'}: `num_cl",
        ),
        (
            {"metricFunction": "F1Score", "metricFunctionArgs": {"num_class": 3, "task": "binary"}},
            "unknown argument 'num_class'; did you mean 'num_classes'\\? \\(F1Score takes: task,",
        ),
        (
            {"metricFunction": "F1Score", "metricFunctionArgs": [1]},
            "metricFunctionArgs must be a dict of keyword arguments",
        ),
        ({"adsValData": [1, 2]}, "adsValData must be a torch.utils.data.DataLoader"),
        ({"trainingContract": None}, "trainingContract must be a contract name"),
    ],
)
def test_bad_arguments_say_what_is_wrong(
    loopback: None, kwargs: dict[str, object], message: str
) -> None:
    arguments: dict[str, object] = {"syncFrequency": 10, "minPeers": 2, "model": net(), **kwargs}
    with pytest.raises(SwarmError, match=message):
        SwarmCallback(**arguments)  # type: ignore[arg-type]


def test_a_misspelt_named_argument_gets_a_did_you_mean(loopback: None) -> None:
    with pytest.raises(SwarmError, match=r"unknown option 'minPeer'; did you mean 'minPeers'\?"):
        SwarmCallback(syncFrequency=10, minPeer=3, model=net())
    with pytest.raises(SwarmError, match=r"SwarmCallback needs minPeers \(an integer >= 1\)"):
        SwarmCallback(syncFrequency=10, model=net())


def test_hpe_alias_ml_platform_is_accepted(loopback: None) -> None:
    callback = SwarmCallback(
        10, 2, model=net(), mlPlatform="PYTORCH", lossFunction="CrossEntropyLoss"
    )
    assert callback.loopback


def test_the_whole_state_travels_with_dtypes_kept() -> None:
    model = net()
    model.train()
    model(torch.randn(8, 64))  # BatchNorm running stats and num_batches_tracked move
    state = state_of(model)
    assert state["1.num_batches_tracked"].dtype == np.int64
    assert state["1.num_batches_tracked"].shape == ()
    other = net()
    load_state(other, state)
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        assert a.dtype == b.dtype, name
        assert torch.equal(a, b), name
    half = torch.nn.Linear(4, 2).to(torch.bfloat16)
    copy = torch.nn.Linear(4, 2).to(torch.bfloat16)
    load_state(copy, state_of(half))
    assert torch.equal(half.weight, copy.weight)


def digits_split(node: int, nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    keep = (y % nodes) != node  # label skew: each node lacks some classes
    return torch.tensor(x[keep] / 16.0, dtype=torch.float32), torch.tensor(y[keep])


def test_loopback_trains_alone(loopback: None) -> None:
    model = net()
    x, y = digits_split(0, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with SwarmCallback(syncFrequency=5, minPeers=2, model=model) as swarm:
        for start in range(0, 200, 20):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(
                model(x[start : start + 20]), y[start : start + 20]
            ).backward()
            optimizer.step()
            swarm.step()
    assert swarm.isSwarmTrainingOver
    assert swarm.rounds_done == 0


def hpe_style_script(socket: Path, node: int, out: dict[int, dict[str, torch.Tensor]]) -> None:
    """Written the way HPE's examples are: import from swarmlearning.pyt, hooks by hand."""
    from swarmlearning.pyt import SwarmCallback as HPECallback

    model = net()
    x, y = digits_split(node, 2)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=False
    )
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:64], y[:64]), batch_size=32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    swarmCallback = HPECallback(
        syncFrequency=20,
        minPeers=2,
        useAdaptiveSync=False,
        adsValData=val,
        adsValBatchSize=32,
        model=model,
        totalEpochs=2,
        lossFunction="CrossEntropyLoss",
        lossFunctionArgs={"reduction": "sum"},
        metricFunction="Accuracy",
        metricFunctionArgs={"task": "multiclass", "num_classes": 10},
        nodeSocket=str(socket),
    )
    swarmCallback.on_train_begin()
    for epoch in range(2):
        for xb, yb in loader:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            optimizer.step()
            swarmCallback.on_batch_end()
        swarmCallback.on_epoch_end(epoch)
    swarmCallback.on_train_end()
    out[node] = {k: v.clone() for k, v in model.state_dict().items()}


def our_style_script(
    socket: Path,
    node: int,
    out: dict[int, dict[str, torch.Tensor]],
    epochs: int = 2,
    rounds: dict[int, int] | None = None,
) -> None:
    model = net()
    x, y = digits_split(node, 2)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=False
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with SwarmCallback(syncFrequency=20, minPeers=2, model=model, nodeSocket=str(socket)) as swarm:
        for _ in range(epochs):
            for xb, yb in loader:
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(xb), yb).backward()
                optimizer.step()
                swarm.step()
    out[node] = {k: v.clone() for k, v in model.state_dict().items()}
    if rounds is not None:
        rounds[node] = swarm.rounds_done


@contextlib.contextmanager
def two_daemons(tmp_path: Path) -> Iterator[list[Path]]:
    """Two swarm-node processes (the demo's LocalSwarm: the first the sentinel, both
    validators, certificates in ``tmp_path/pki``, logs in ``nI/node.log``); their data dirs."""
    with LocalSwarm(tmp_path, 2) as swarm:
        yield [node.data_dir for node in swarm.nodes]


def run_scripts(*scripts: threading.Thread) -> None:
    for script in scripts:
        script.start()
    for script in scripts:
        script.join(timeout=300)


@pytest.mark.process
def test_two_daemons_two_scripts_end_with_identical_weights(tmp_path: Path) -> None:
    out: dict[int, dict[str, torch.Tensor]] = {}
    with two_daemons(tmp_path) as data:
        run_scripts(
            threading.Thread(target=hpe_style_script, args=(data[0] / "sl.sock", 0, out)),
            threading.Thread(target=our_style_script, args=(data[1] / "sl.sock", 1, out)),
        )
    assert sorted(out) == [0, 1]
    for name, tensor in out[0].items():
        assert torch.equal(tensor, out[1][name]), name  # bit for bit, buffers included


@pytest.mark.process
def test_a_node_that_finishes_first_waits_for_the_others(tmp_path: Path) -> None:
    """Node 0 trains one epoch, node 1 four: node 0 keeps contributing its snapshot until
    node 1 is done too, and both end with the same final merged model."""
    out: dict[int, dict[str, torch.Tensor]] = {}
    rounds: dict[int, int] = {}
    with two_daemons(tmp_path) as data:
        run_scripts(
            *(
                threading.Thread(
                    target=our_style_script,
                    args=(data[node] / "sl.sock", node, out, epochs, rounds),
                )
                for node, epochs in ((0, 1), (1, 4))
            )
        )
    assert sorted(out) == [0, 1]
    for name, tensor in out[0].items():
        assert torch.equal(tensor, out[1][name]), name
    # node 1: the first sync, a sync every 20 of its ~112 batches, the final one; node 0
    # took part in every one of them although it stopped after ~28 batches
    assert rounds[0] == rounds[1] >= 6


def accuracy(weights: dict[str, torch.Tensor]) -> float:
    model = net()
    model.load_state_dict(weights)
    model.eval()
    x, y = load_digits(return_X_y=True)
    with torch.no_grad():
        predicted = model(torch.tensor(x / 16.0, dtype=torch.float32)).argmax(dim=1)
    return float((predicted == torch.tensor(y)).float().mean())


@pytest.mark.process
def test_the_swarm_model_beats_each_local_only_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each node lacks half the classes: alone it cannot pass 55%; together they can."""
    swarm: dict[int, dict[str, torch.Tensor]] = {}
    with two_daemons(tmp_path) as data:
        run_scripts(
            *(
                threading.Thread(target=our_style_script, args=(data[i] / "sl.sock", i, swarm))
                for i in range(2)
            )
        )
    monkeypatch.setenv("SWARM_LOOPBACK", "True")
    alone: dict[int, dict[str, torch.Tensor]] = {}
    for node in range(2):
        our_style_script(tmp_path / "unused.sock", node, alone)
    local_best = max(accuracy(alone[0]), accuracy(alone[1]))
    assert local_best < 0.55
    assert accuracy(swarm[0]) > local_best + 0.2


def test_progress_bar_with_eta_when_total_epochs_is_set(
    loopback: None, caplog: pytest.LogCaptureFixture
) -> None:
    callback = SwarmCallback(syncFrequency=5, minPeers=2, model=net(), totalEpochs=4)
    with caplog.at_level("INFO", logger="SwarmCallback"):
        callback.on_epoch_end(0)
        callback.on_epoch_end(1)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("[#####...............] epoch 1/4, 0 rounds, ETA ")
    assert lines[1].startswith("[##########..........] epoch 2/4, 0 rounds, ETA ")


@pytest.mark.process
def test_a_model_that_is_not_the_contracts_fails_at_the_first_sync(tmp_path: Path) -> None:
    """Another model on a contract whose layout is set: the first sync raises one SwarmError
    naming the tensor and the fixes, at once (not a warning per round and exit status 0)."""
    out: dict[int, dict[str, torch.Tensor]] = {}
    with two_daemons(tmp_path) as data:
        run_scripts(
            *(
                threading.Thread(target=our_style_script, args=(data[i] / "sl.sock", i, out, 1))
                for i in range(2)
            )
        )
        other = torch.nn.Linear(64, 10)  # not the model the contract's rounds merged
        socket = str(data[0] / "sl.sock")
        callback = SwarmCallback(syncFrequency=5, minPeers=2, model=other, nodeSocket=socket)
        with pytest.raises(SwarmError) as caught:
            callback.on_train_begin()  # a hang here would end in syncTimeout's ConfigError
        callback.close()
    assert callback.rounds_done == 0
    message = str(caught.value)
    assert "tensor 0 is 'weight', the contract's is '0.weight'" in message
    assert "trainingContract='NAME'" in message
    assert "RESET CONTRACT defaultbb.cqdb.sml.hpe" in message


def test_hpe_loss_and_any_torchmetrics_metric_on_the_validation_data() -> None:
    """HPE's mnist-pyt options: the loss is the mean per sample whatever its reduction, the
    metric is torchmetrics' own over the whole set (here F1Score, macro-averaged)."""
    import torchmetrics

    model = net()
    x, y = digits_split(0, 2)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:100], y[:100]), 32)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SWARM_LOOPBACK", "True")
        callback = SwarmCallback(
            10,
            2,
            model=model,
            adsValData=val,
            lossFunction="CrossEntropyLoss",
            lossFunctionArgs={"reduction": "sum"},
            metricFunction="F1Score",
            metricFunctionArgs={"task": "multiclass", "num_classes": 10, "average": "macro"},
        )
    callback.loopback = False  # as with a node: evaluate before each sync
    loss, metric = callback.evaluate()
    model.eval()
    with torch.no_grad():
        out = model(x[:100])
    expected_loss = float(torch.nn.functional.cross_entropy(out, y[:100]))
    f1 = torchmetrics.F1Score(task="multiclass", num_classes=10, average="macro")
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert metric == pytest.approx(float(f1(out, y[:100])), rel=1e-5)
    assert model.training is False  # it was in eval mode before, and is left so


def test_accuracy_without_arguments_is_the_argmax_accuracy() -> None:
    """What swarmlearn took before torchmetrics (and the demo passes): no task needed."""
    from swarmlearn.callback.torch_eval import evaluate, metric_function

    model = net()
    x, y = digits_split(0, 2)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:100], y[:100]), 32)
    loss, accuracy = evaluate(model, val, None, metric_function("Accuracy", None))
    model.eval()
    with torch.no_grad():
        expected = float((model(x[:100]).argmax(dim=1) == y[:100]).float().mean())
    assert loss is None
    assert accuracy == pytest.approx(expected)
