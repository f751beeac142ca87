"""HPE's own example scripts, as HPE publishes them, each on three real swarm-node daemons.

The scripts in ``tests/hpe_examples/`` are copies of HewlettPackard/swarm-learning's
``examples/`` with only their data loading replaced by small stand-ins (``tests/hpe_standins``;
each file's header says which lines changed, and ``git log -p`` shows them against HPE's
text). Each runs as its own process, as SWOP would start it, with HPE's environment variables
(``MAX_EPOCHS``, ``MIN_PEERS``, ``SCRATCH_DIR``, ``DATA_DIR``, ``NODE_ID``) and the node's
socket in ``SWARM_NODE_SOCKET``; the models the scripts save must be bit-identical on the
three nodes, and every sync a round of all three.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from swarmlearn.demo.swarm import LocalSwarm
from tests.hpe_standins import write_fraud_csvs

SCRIPTS_TIMEOUT_S = 600  # the three scripts together, after the swarm has formed
# 1.5-3 minutes each on two busy cores (three daemons, three trainers importing their framework)
pytestmark = [
    pytest.mark.process,
    pytest.mark.slow,
    pytest.mark.heavy,  # real training of five HPE scripts: make test-heavy, not CI
    pytest.mark.timeout(SCRIPTS_TIMEOUT_S + 120),
]

ROOT = Path(__file__).parent.parent
EXAMPLES = Path(__file__).parent / "hpe_examples"
NODES = 3
ROUND_LINE = re.compile(r"round (\d+): (\d+) peers, (?:[\d.]+ MB \()?(\d+) bytes")


def run_example(
    tmp_path: Path, script: str, extra_env: Callable[[int, Path], dict[str, str]] | None = None
) -> tuple[list[Path], list[str]]:
    """``script`` on three daemons, one process per node; each node's scratch dir and log."""
    scratch = [tmp_path / f"scratch{i}" for i in range(NODES)]
    processes: list[subprocess.Popen[str]] = []
    with LocalSwarm(tmp_path / "swarm", NODES) as swarm:
        try:
            for index, node in enumerate(swarm.nodes):
                scratch[index].mkdir()
                env = {
                    **os.environ,
                    "SWARM_NODE_SOCKET": str(node.socket),
                    "SCRATCH_DIR": str(scratch[index]),
                    "MAX_EPOCHS": "2",
                    "MIN_PEERS": str(NODES),
                    "NODE_ID": f"n{index + 1}",
                    "HPE_STANDIN_NODE": str(index),
                    "HPE_STANDIN_NODES": str(NODES),
                    "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                    "PYTHONUNBUFFERED": "1",
                    "OMP_NUM_THREADS": "1",
                    "TF_CPP_MIN_LOG_LEVEL": "2",
                    **(extra_env(index, scratch[index]) if extra_env else {}),
                }
                env.pop("SWARM_LOOPBACK", None)
                processes.append(
                    subprocess.Popen(
                        [sys.executable, str(EXAMPLES / script)],
                        cwd=scratch[index],
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        text=True,
                        env=env,
                    )
                )
            deadline = time.monotonic() + SCRIPTS_TIMEOUT_S
            logs = [
                process.communicate(timeout=max(1.0, deadline - time.monotonic()))[0]
                for process in processes
            ]
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
    for process, log in zip(processes, logs, strict=True):
        assert process.returncode == 0, log[-4000:]
    return scratch, logs


def rounds(log: str) -> list[tuple[int, int, int]]:
    """The callback's round lines: (round, peers, bytes) for each sync."""
    return [(int(r), int(p), int(b)) for r, p, b in ROUND_LINE.findall(log)]


def assert_all_rounds_of_three(logs: list[str]) -> list[tuple[int, int, int]]:
    seen = [rounds(log) for log in logs]
    assert seen[0], logs[0][-4000:]
    assert all(s == seen[0] for s in seen), seen
    assert all(peers == NODES for _, peers, _ in seen[0]), seen[0]
    return seen[0]


def torch_saved_arrays(path: Path) -> list[bytes]:
    """The tensors' storages in a ``torch.save`` file (the model's class is the script's)."""
    with zipfile.ZipFile(path) as archive:
        names = sorted(n for n in archive.namelist() if "/data/" in n)
        return [archive.read(n) for n in names]


def keras_saved_arrays(path: Path) -> list[bytes]:
    """The model's weights in a ``.keras`` file (its ``model.weights.h5``), as bytes: its
    layers', not the optimizer's (each node's own, as in HPE)."""
    import h5py

    arrays: list[bytes] = []
    weights = path.with_suffix(".weights.h5")
    with zipfile.ZipFile(path) as archive:
        weights.write_bytes(archive.read("model.weights.h5"))
    with h5py.File(weights, "r") as store:

        def visit(name: str, item: object) -> None:
            if isinstance(item, h5py.Dataset) and name.startswith("layers/"):
                arrays.append(name.encode() + np.asarray(item).tobytes())

        store.visititems(visit)
    return arrays


def safetensors_arrays(path: Path) -> dict[str, np.ndarray[Any, Any]]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def test_mnist_pyt_with_f1score(tmp_path: Path) -> None:
    """examples/mnist-pyt: hooks by hand, lossFunction CrossEntropyLoss with
    {'reduction': 'sum'}, metricFunction F1Score with {'task': 'multiclass', 'num_classes': 10}."""
    scratch, logs = run_example(tmp_path, "mnist_pyt.py")
    synced = assert_all_rounds_of_three(logs)
    assert len(synced) >= 2  # on_train_begin's, on_train_end's (128 batches: none between)
    saved = [torch_saved_arrays(s / "mnist_pyt" / "saved_model.pt") for s in scratch]
    assert saved[0]
    assert saved[1] == saved[0]
    assert saved[2] == saved[0]
    assert sum(len(a) for a in saved[0]) == synced[0][2]  # the whole model travels
    figures = re.findall(r"adsValData: loss ([\d.]+), F1Score ([\d.]+)", logs[0])
    assert len(figures) >= 2  # before the first sync and the last: PERFDATA's loss and metric
    assert 0.0 < float(figures[-1][1]) <= 1.0


def test_mnist_keras(tmp_path: Path) -> None:
    scratch, logs = run_example(tmp_path, "mnist_tf.py")
    assert_all_rounds_of_three(logs)
    saved = [keras_saved_arrays(s / "mnist_tf.keras") for s in scratch]
    assert saved[0]
    assert saved[1] == saved[0]
    assert saved[2] == saved[0]
    assert "Test accuracy = " in logs[0]


def test_fraud_detection_keras(tmp_path: Path) -> None:
    def data(index: int, scratch: Path) -> dict[str, str]:
        write_fraud_csvs(scratch, index)
        return {"DATA_DIR": str(scratch)}

    scratch, logs = run_example(tmp_path, "fraud_detection.py", data)
    assert_all_rounds_of_three(logs)
    saved = [keras_saved_arrays(s / "fraud-detection.keras") for s in scratch]
    assert saved[0]
    assert saved[1] == saved[0]
    assert saved[2] == saved[0]


def hf_final(scratch: Path, name: str) -> dict[str, np.ndarray[Any, Any]]:
    node = scratch.name[-1]
    final = scratch / "model" / "saved_models" / f"n{int(node) + 1}_full" / "final"
    return safetensors_arrays(final / name)


@pytest.mark.parametrize(
    ("script", "saved"),
    [("huggingface.py", "model.safetensors"), ("huggingface_peft.py", "adapter_model.safetensors")],
)
def test_hugging_face_trainer_full_and_peft(tmp_path: Path, script: str, saved: str) -> None:
    """examples/huggingface (hfMode full: the whole state_dict travels) and huggingface-peft
    (hfMode peft: only the LoRA adapters and the classification head travel)."""
    scratch, logs = run_example(tmp_path, script)
    synced = assert_all_rounds_of_three(logs)
    finals = [hf_final(s, saved) for s in scratch]
    for other in finals[1:]:
        assert sorted(other) == sorted(finals[0])
        for name, array in finals[0].items():
            assert other[name].tobytes() == array.tobytes(), name
    sent = {size for _, _, size in synced}
    saved_bytes = sum(a.nbytes for a in finals[0].values())
    assert sent == {saved_bytes}, (sent, saved_bytes)  # exactly what save_pretrained keeps
    if script == "huggingface_peft.py":
        assert all("lora_" in n or "classifier" in n for n in finals[0]), sorted(finals[0])
        assert saved_bytes < 12_000  # the 2-layer BERT's full state is ~110 kB
