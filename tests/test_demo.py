"""`swarmlearn demo` as a user runs it: real daemons, real training, a table from real numbers;
Ctrl-C stops every process it started; bad arguments are one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.process

DEMO = [sys.executable, "-m", "swarmlearn", "demo"]
TIMEOUT_S = 240


def alive(workdir: Path) -> list[str]:
    """The processes the demo recorded that still exist."""
    found = []
    for line in (workdir / "pids").read_text().splitlines():
        name, pid = line.split()
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            continue
        found.append(name)
    return found


def run_demo(tmp_path: Path, nodes: int) -> tuple[Path, subprocess.CompletedProcess[str], Any]:
    """The demo with ``nodes`` nodes, 2 rounds: its workdir, the finished process (exit 0),
    and its --json results."""
    workdir, results = tmp_path / "demo", tmp_path / "results.json"
    flags = ["--nodes", str(nodes), "--rounds", "2", "--workdir", str(workdir)]
    done = subprocess.run(
        [*DEMO, *flags, "--json", str(results)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return workdir, done, json.loads(results.read_text())


def test_two_nodes_two_rounds_give_a_table_from_real_training(tmp_path: Path) -> None:
    workdir, done, found = run_demo(tmp_path, 2)
    assert found["identical"]
    assert found["rounds_merged"] >= 3  # the first sync, one per round, the final one
    swarm, alone = found["swarm_accuracy"], found["alone_accuracy"]
    # each node lacks half the digits: alone it cannot pass ~55%; the swarm model can
    assert all(accuracy < 0.6 for accuracy in alone.values()), alone
    assert len(set(swarm.values())) == 1  # the same model on both nodes
    assert min(swarm.values()) > max(alone.values()) + 0.1, (swarm, alone)
    # the table prints exactly these numbers, and the plot is a real PNG
    for name in ("n0", "n1"):
        row = next(line for line in done.stdout.splitlines() if line.startswith(f"{name} "))
        assert row.split()[-2:] == [f"{alone[name]:.3f}", f"{swarm[name]:.3f}"], row
    assert (workdir / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"hash {found['merged_hash'][:12]}" in done.stdout
    assert alive(workdir) == []


def test_three_daemons_end_with_one_model_better_than_each_alone(tmp_path: Path) -> None:
    """Daemon mode with three nodes: each lacks three or four digits, so alone it stays under
    70%; the three end bit-identical (one merged hash) and better than any of them alone."""
    _, _, found = run_demo(tmp_path, 3)
    assert found["identical"]
    assert len(set(found["swarm_accuracy"].values())) == 1
    alone = found["alone_accuracy"].values()
    assert max(alone) < 0.7, alone
    assert min(found["swarm_accuracy"].values()) > max(alone), found


def test_ctrl_c_stops_every_process_the_demo_started(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    with subprocess.Popen(
        [*DEMO, "--nodes", "2", "--rounds", "50", "--workdir", str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as demo:
        assert demo.stdout is not None
        for line in demo.stdout:  # until the first round is merged: everything is running
            if line.startswith("round"):
                break
        else:
            pytest.fail("the demo ended before its first round")
        assert len(alive(workdir)) == 4  # two nodes, two trainers
        demo.send_signal(signal.SIGINT)
        rest = demo.communicate(timeout=60)[0]
    assert demo.returncode == 130, rest
    assert "interrupted" in rest
    assert alive(workdir) == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--nodes", "1"], "--nodes must be at least 2 (a swarm), got 1"),
        (["--rounds", "0"], "--rounds must be at least 1, got 0"),
        (["--merge-method", "average"], "--merge-method: merge method 'average' is not one of: "),
        (["--framework", "jax"], "--framework must be one of: torch, keras; got 'jax'"),
    ],
)
def test_bad_arguments_are_one_line(arguments: list[str], message: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [*DEMO, *arguments, "--workdir", str(tmp_path / "w")], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_workdir_that_is_not_a_demo_workspace_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    done = subprocess.run(
        [*DEMO, "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "exists and is not a demo workspace" in done.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"
