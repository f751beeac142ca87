"""Real processes: every merge method in sync rounds of real ``swarm-node`` daemons (loopback,
mutual TLS, round lanes), and robust methods against poisoned contributors.

1. Three daemons run one round per method with a small model handed in through each node's
   local endpoint; every node ends with the same bytes, equal to the merge engine's
   whole-state reference (``merge``) bit for bit. The global methods (geometric median, Krum,
   Multi-Krum) exchange their partial sums among the owners over the real network.
2. Ten daemons (three validators, seven SL-only nodes) train a logistic regression on
   sklearn's digits, IID shares, four rounds per method; three of the ten (30%) are poisoned:
   they hand in their trained weights times -4. The robust methods end within 2 accuracy
   points of a clean swarm (all ten honest, mean); the mean is ruined. Every round's merged
   model is the one this process computes from the same contributions, bit for bit.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from swarmlearn.consensus.ledger.app import DEFAULT_CONTRACT
from swarmlearn.merge import ModelState, flatten, layout_of, merge, unpack
from swarmlearn.merge.manifest import Layout
from swarmlearn.merge.methods import round_method
from swarmlearn.p2p.certs import create_ca, issue_certificate
from swarmlearn.p2p.identity import Identity, IdentityPaths, Role, load_identity
from swarmlearn.roles.local.endpoint import LocalClient
from tests.test_real_swarm import node_process, wait_for

pytestmark = pytest.mark.process

Array = np.ndarray[Any, Any]


@dataclass(frozen=True)
class RealSwarm:
    pki: Path
    names: tuple[str, ...]
    sockets: tuple[Path, ...]
    processes: tuple[subprocess.Popen[str], ...]

    def identity(self, name: str) -> Identity:
        pki = self.pki
        return load_identity(
            IdentityPaths(pki / f"{name}.pem", pki / f"{name}-key.pem", pki / "ca.pem")
        )

    def participant_order(self) -> list[int]:
        """The round's participant order (sorted node ids), as indices into ``names``."""
        ids = [str(self.identity(n).peer_id) for n in self.names]
        return sorted(range(len(ids)), key=lambda i: ids[i])


@contextlib.contextmanager
def real_swarm(root: Path, validators: int, sl_only: int) -> Iterator[RealSwarm]:
    """``validators`` SN+SL daemons (the first the sentinel) and ``sl_only`` SL daemons."""
    ca = create_ca(root / "pki")
    names = [f"sn{i}" for i in range(validators)] + [f"sl{i}" for i in range(sl_only)]
    for name in names:
        roles = [Role.SN, Role.SL] if name.startswith("sn") else [Role.SL]
        issue_certificate(ca, name, root / "pki", hosts=["127.0.0.1"], roles=roles)
    pki, data = root / "pki", [root / name for name in names]
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(
            node_process(pki, names[0], data[0], "--sentinel", "--listen", "127.0.0.1:0")
        )
        join = ["--bootstrap", f"127.0.0.1:{first[1]}", "--listen", "127.0.0.1:0"]
        started = [first] + [
            stack.enter_context(node_process(pki, name, path, *join))
            for name, path in zip(names[1:], data[1:], strict=True)
        ]
        ports = [port for _, port in started]
        sockets = tuple(d / "sl.sock" for d in data)
        swarm = RealSwarm(pki, tuple(names), sockets, tuple(p for p, _ in started))
        trio.run(
            wait_for,
            swarm.identity(names[0]),
            ports,
            f"{validators} validators and every node at the ledger's height",
            lambda s: (
                all(len(x.validators) == validators for x in s)
                and len({(x.height, x.app_hash) for x in s}) == 1
            ),
        )
        yield swarm


# ---------------------------------------------------------------- one round per method

METHODS = [
    "mean",
    "coordmedian",
    "trimmedmean:trim_fraction=0.34",
    "geomedian",
    "krum",
    "multikrum:selected=2",
]


@pytest.fixture(scope="module")
def swarm3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealSwarm]:
    with real_swarm(tmp_path_factory.mktemp("methods3"), 3, 0) as swarm:
        yield swarm


def small_model(seed: int) -> ModelState:
    rng = np.random.default_rng(seed)
    arrays: dict[str, Array] = {
        "w": rng.standard_normal(20_000).astype(np.float32),
        "b": (rng.standard_normal(10) * 3).astype(np.float64),
        "bn.num_batches_tracked": np.array(rng.integers(0, 100), np.int64),
    }
    return ModelState(arrays)


@pytest.mark.parametrize("method", METHODS)
def test_each_method_ends_a_real_round_bit_identical_and_equal_to_the_reference(
    swarm3: RealSwarm, method: str
) -> None:
    seed = 100 * METHODS.index(method)
    layout = layout_of(small_model(0), chunk_bytes=16 * 1024)  # 5 chunks: every owner has some

    def sync(node: int) -> tuple[bytes | None, bytes, str]:
        with LocalClient(swarm3.sockets[node], timeout_s=120) as client:
            flat = bytes(flatten(small_model(seed + node), layout))
            outcome = client.sync_round(
                DEFAULT_CONTRACT, layout, flat, weight=node + 1, min_peers=3, merge_method=method
            )
            merged = None if outcome.merged is None else bytes(outcome.merged)
            return merged, outcome.root, outcome.reason

    with ThreadPoolExecutor(3) as pool:
        outcomes = list(pool.map(sync, range(3)))
    assert all(merged is not None for merged, _, _ in outcomes), [o[2] for o in outcomes]
    assert len({(merged, root) for merged, root, _ in outcomes}) == 1
    order = swarm3.participant_order()
    states = [small_model(seed + i) for i in order]
    reference = merge(
        states, [i + 1 for i in order], round_method(method, 3), chunk_bytes=layout.chunk_bytes
    )
    assert outcomes[0][0] == bytes(flatten(reference, layout))


@pytest.mark.slow
def test_a_participant_that_dies_mid_exchange_is_planned_out_and_the_rest_merge(
    tmp_path: Path,
) -> None:
    """Geometric median, 3 validators and an SL-only node killed once its round's exchange
    starts: its chunks and partial sums stop; at the deadline the ledger re-plans with the
    three that are alive, which end bit-identical, equal to the reference over the three."""
    layout = layout_of(small_model(0), chunk_bytes=16 * 1024)
    with real_swarm(tmp_path, 3, 1) as swarm:
        victim = swarm.processes[3]
        checked_in, exchanging = threading.Event(), threading.Event()
        lines: list[str] = []

        def doomed() -> None:
            def progress(text: str) -> None:
                if "checked in" in text:  # on the ledger: the round includes it
                    checked_in.set()
                if "exchanging with" in text:
                    victim.kill()
                    exchanging.set()

            with (
                contextlib.suppress(Exception),
                LocalClient(swarm.sockets[3], timeout_s=60, on_progress=progress) as client,
            ):
                flat = bytes(flatten(small_model(903), layout))
                client.sync_round(
                    DEFAULT_CONTRACT, layout, flat, min_peers=3, merge_method="geomedian"
                )

        def survivor(node: int) -> tuple[bytes | None, bytes, str]:
            with LocalClient(
                swarm.sockets[node], timeout_s=120, on_progress=lines.append
            ) as client:
                flat = bytes(flatten(small_model(900 + node), layout))
                outcome = client.sync_round(
                    DEFAULT_CONTRACT, layout, flat, min_peers=3, merge_method="geomedian"
                )
                merged = None if outcome.merged is None else bytes(outcome.merged)
                return merged, outcome.root, outcome.reason

        killer = threading.Thread(target=doomed, daemon=True)
        killer.start()
        assert checked_in.wait(timeout=60)
        with ThreadPoolExecutor(3) as pool:
            outcomes = list(pool.map(survivor, range(3)))
        killer.join(timeout=60)
        order = [i for i in swarm.participant_order() if i != 3]
    assert exchanging.is_set()
    assert all(merged is not None for merged, _, _ in outcomes), [o[2] for o in outcomes]
    assert len({(merged, root) for merged, root, _ in outcomes}) == 1
    assert any("past its deadline" in line for line in lines), lines
    states = [small_model(900 + i) for i in order]
    reference = merge(states, None, round_method("geomedian", 3), chunk_bytes=layout.chunk_bytes)
    assert outcomes[0][0] == bytes(flatten(reference, layout))


# ---------------------------------------------------------------- poisoned contributors

NODES, POISONED, ROUNDS = 10, 3, 4
ROBUST = ["coordmedian", "trimmedmean:trim_fraction=0.3", "geomedian", "krum", "multikrum"]


@dataclass(frozen=True)
class Digits:
    shares: list[tuple[Array, Array]]
    x_test: Array
    y_test: Array


def digits(nodes: int) -> Digits:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = (x[order] / 16.0).astype(np.float32), y[order].astype(np.int64)
    cut = len(y) // 5
    shares = [(x[cut:][i::nodes], y[cut:][i::nodes]) for i in range(nodes)]
    return Digits(shares, x[:cut], y[:cut])


def train(model: ModelState, x: Array, y: Array, steps: int = 20, lr: float = 0.5) -> ModelState:
    """Full-batch gradient descent on softmax regression (float64 inside, float32 out)."""
    w, b = model["w"].astype(np.float64), model["b"].astype(np.float64)
    onehot = np.eye(10)[y]
    for _ in range(steps):
        z = x @ w + b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        g = (p - onehot) / len(y)
        w -= lr * (x.T @ g)
        b -= lr * g.sum(axis=0)
    return ModelState({"w": w.astype(np.float32), "b": b.astype(np.float32)})


def contribution(model: ModelState, data: Digits, node: int, poisoned: bool) -> ModelState:
    trained = train(model, *data.shares[node])
    if not poisoned or node >= POISONED:
        return trained
    return ModelState({name: trained[name] * np.float32(-4) for name in ("w", "b")})


def accuracy(model: ModelState, data: Digits) -> float:
    predicted = (data.x_test @ model["w"] + model["b"]).argmax(axis=1)
    return float((predicted == data.y_test).mean())


def in_process(data: Digits, method: str, poisoned: bool, order: list[int]) -> list[ModelState]:
    """Every round's merged model, computed here (contributions in the round's order)."""
    model = ModelState({"w": np.zeros((64, 10), np.float32), "b": np.zeros(10, np.float32)})
    merged = []
    for _ in range(ROUNDS):
        states = [contribution(model, data, node, poisoned) for node in order]
        model = merge(states, None, round_method(method, NODES))
        merged.append(model)
    return merged


def swarm_rounds(swarm: RealSwarm, data: Digits, method: str, layout: Layout) -> list[list[bytes]]:
    """Each node's merged bytes per round, from the real swarm."""

    def node_run(node: int) -> list[bytes]:
        model = ModelState({"w": np.zeros((64, 10), np.float32), "b": np.zeros(10, np.float32)})
        seen = []
        with LocalClient(swarm.sockets[node], timeout_s=120) as client:
            for _ in range(ROUNDS):
                flat = bytes(flatten(contribution(model, data, node, True), layout))
                outcome = client.sync_round(
                    DEFAULT_CONTRACT, layout, flat, min_peers=NODES, merge_method=method
                )
                assert outcome.merged is not None, outcome.reason
                seen.append(bytes(outcome.merged))
                model = unpack(seen[-1], layout)
        return seen

    run: Callable[[int], list[bytes]] = node_run
    with ThreadPoolExecutor(NODES) as pool:
        return list(pool.map(run, range(NODES)))


@pytest.mark.slow
@pytest.mark.heavy  # ten daemons train digits under six methods: make test-heavy, not CI
def test_robust_methods_hold_against_30_percent_poisoned_contributors(tmp_path: Path) -> None:
    data = digits(NODES)
    identity_order = list(range(NODES))
    clean = accuracy(in_process(data, "mean", False, identity_order)[-1], data)
    assert clean > 0.9
    layout = layout_of(
        ModelState({"w": np.zeros((64, 10), np.float32), "b": np.zeros(10, np.float32)})
    )
    results = {}
    with real_swarm(tmp_path, 3, NODES - 3) as swarm:
        order = swarm.participant_order()
        for method in ["mean", *ROBUST]:
            runs = swarm_rounds(swarm, data, method, layout)
            expected = in_process(data, method, True, order)
            for number in range(ROUNDS):
                assert len({run[number] for run in runs}) == 1, f"{method} round {number + 1}"
                assert runs[0][number] == bytes(flatten(expected[number], layout)), method
            results[method] = accuracy(unpack(runs[0][-1], layout), data)
    print(f"clean {clean:.4f}; poisoned: {results}")
    assert results["mean"] < clean - 0.5  # the mean is ruined
    for method in ROBUST:
        assert results[method] >= clean - 0.02, (method, results[method], clean)
