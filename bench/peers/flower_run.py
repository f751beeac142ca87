"""Run the Flower App of bench/flower.py once, in one mode, and print one JSON line.

Run with .venv-peers' python (``make bench-peers``). Two modes, the same App
(bench/peers/flower_app: FedAvg on swarmlearn.demo.digits):

- ``sim``: Flower's simulation engine (``flwr.simulation.run_simulation``, Ray backend, one CPU
  per virtual SuperNode) in this process;
- ``deploy``: Flower's deployment runtime as separate processes on loopback, insecure local
  mode: one ``flower-superlink``, N ``flower-supernode`` (each with its partition id), and
  ``flwr run`` submitting the App to the SuperLink.

Wall time runs from the start (before Ray or the first Flower process) to the ServerApp's
result file; ``rounds_s`` is the ServerApp's own time from its first round to its last.
Every process started here is killed (with its process group) before the line is printed.

    flower_run.py --mode sim|deploy --nodes N --rounds R --epochs E [--seed S]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
APP = HERE / "flower_app"
BIN = Path(sys.executable).parent
ENV = "SWARMLEARN_FLOWER_BENCH"
POLL_S = 0.1


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def run_sim(args: argparse.Namespace) -> None:
    simulation = __import__("flwr.simulation", fromlist=["run_simulation"])
    sys.path.insert(0, str(args.app))
    paths = [str(args.app), *filter(None, [os.environ.get("PYTHONPATH")])]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)  # for Ray's workers
    server = __import__("flowerdigits.server_app", fromlist=["app"]).app
    client = __import__("flowerdigits.client_app", fromlist=["app"]).app
    simulation.run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=args.nodes,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )


def descendants(root: int) -> list[int]:
    """Every living process below ``root`` (Flower's SuperLink starts helpers in new sessions)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


@contextlib.contextmanager
def process_group() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes appended to the yielded list are killed on exit, with all they started."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        doomed = [pid for process in started for pid in [process.pid, *descendants(process.pid)]]
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for process in started:
            process.wait(timeout=30)


def spawn(started: list[subprocess.Popen[bytes]], logs: Path, name: str, *command: str) -> None:
    log = (logs / f"{name}.log").open("wb")
    started.append(
        subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    )


def run_deploy(args: argparse.Namespace, result: Path, timeout_s: float) -> None:
    logs = result.parent
    home = logs / "flwr-home"
    home.mkdir()
    os.environ["FLWR_HOME"] = str(home)
    os.environ["PATH"] = os.pathsep.join([str(BIN), os.environ.get("PATH", "")])  # superexec
    port = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    no_uv = "--disable-runtime-dependency-installation"
    with process_group() as started:
        spawn(
            started, logs, "superlink", str(BIN / "flower-superlink"), "--insecure", no_uv,
            "--port", str(port),
        )  # fmt: skip
        wait_port(port, started, timeout_s)
        for node in range(args.nodes):
            spawn(
                started, logs, f"supernode-{node}", str(BIN / "flower-supernode"), "--insecure",
                "--superlink", f"127.0.0.1:{port}", "--port", str(free_port()),
                "--node-config", f"partition-id={node} num-partitions={args.nodes}",
            )  # fmt: skip
        submit = subprocess.run(
            [str(BIN / "flwr"), "run", str(args.app), "bench"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if submit.returncode != 0:
            raise RuntimeError(f"flwr run: {(submit.stdout + submit.stderr).strip()[-500:]}")
        wait_for(result, started, timeout_s)


def wait_port(port: int, started: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        if started[0].poll() is not None:
            raise RuntimeError(f"flower-superlink exited: {started[0].returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"flower-superlink not listening within {timeout_s} s")
        time.sleep(POLL_S)


def wait_for(result: Path, started: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not result.exists():
        dead = [p for p in started if p.poll() is not None]
        if dead:
            raise RuntimeError(f"exited early (status {dead[0].returncode}): {dead[0].args!r}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no result within {timeout_s} s")
        time.sleep(POLL_S)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("sim", "deploy"), required=True)
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout-s", type=float, default=540.0)
    parser.add_argument("--app", type=Path, default=APP, help="the Flower App's directory")
    parser.add_argument("--logs", type=Path, help="keep the processes' logs in this new folder")
    args = parser.parse_args()
    out: dict[str, Any] = {"mode": args.mode}
    with contextlib.ExitStack() as stack:
        if args.logs:
            args.logs.mkdir(parents=True)
            tmp = str(args.logs)
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-flower-"))
        result = Path(tmp) / "result.json"
        settings = {"nodes": args.nodes, "rounds": args.rounds, "epochs": args.epochs}
        os.environ[ENV] = json.dumps({**settings, "seed": args.seed, "result": str(result)})
        started = time.perf_counter()
        try:
            if args.mode == "sim":
                run_sim(args)
            else:
                run_deploy(args, result, args.timeout_s)
            out.update(json.loads(result.read_text()), wall_s=time.perf_counter() - started)
        except Exception as exc:  # the bench reports why a mode cannot run here
            out["error"] = f"{type(exc).__name__}: {exc}"
            for log in sorted(Path(tmp).glob("*.log")):
                tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                out.setdefault("logs", {})[log.stem] = tail
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
