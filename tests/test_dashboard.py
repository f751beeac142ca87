"""The swarm dashboard against a real node API: pages, live updates, errors and the CLI.

Each test runs one validator in-process with its API on a free loopback port and writes
real signed transactions to its ledger; the dashboard serves in the same trio nursery and is
read over plain HTTP, as a browser would. The real-browser test is test_dashboard_browser.py.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx
import pytest
import trio
from cryptography.hazmat.primitives.serialization import Encoding

from swarmlearn.cli.main import main
from swarmlearn.consensus.ledger.app import DEFAULT_CONTRACT, sign_transaction
from swarmlearn.consensus.ledger.tasks import (
    DEFAULT_TASKRUNNER,
    AssignTask,
    CreateTask,
    EnrollTaskRunner,
    FinalizeTask,
    TaskPeerStatus,
    canonical_json,
)
from swarmlearn.consensus.ledger.txs import (
    CheckIn,
    CreateContract,
    Exclude,
    Join,
    Merged,
    PerfData,
    TensorSpec,
)
from swarmlearn.dashboard import charts, model, render
from swarmlearn.dashboard.server import serve_dashboard
from swarmlearn.dashboard.upstream import Snapshot, Upstream
from swarmlearn.p2p.certs import create_ca, issue_certificate
from swarmlearn.p2p.identity import Identity, Role
from swarmlearn.p2p.wire import Message
from swarmlearn.roles.node.node import ValidatorNode
from tests.api_helpers import identity, sentinel_api

LAYOUT = (TensorSpec("fc.weight", "float32", (10, 4)), TensorSpec("fc.bias", "float32", (10,)))
WAIT_S = 30.0


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    ca = create_ca(tmp_path / "pki")
    issue_certificate(ca, "sn", tmp_path / "pki", hosts=["127.0.0.1"], roles=[Role.SN])
    for name in ("a", "b"):
        issue_certificate(ca, name, tmp_path / "pki", hosts=[], roles=[Role.SL])
    issue_certificate(ca, "op", tmp_path / "pki", hosts=[], roles=[Role.SWCI])
    issue_certificate(ca, "swop", tmp_path / "pki", hosts=[], roles=[Role.SWOP])
    other = create_ca(tmp_path / "other")
    issue_certificate(other, "stranger", tmp_path / "other", hosts=[], roles=[Role.SWCI])
    # the stranger trusts the swarm's CA (so it can talk), but the swarm does not trust it
    both = (tmp_path / "other" / "ca.pem").read_text() + (tmp_path / "pki" / "ca.pem").read_text()
    (tmp_path / "other" / "both.pem").write_text(both)
    return tmp_path / "pki"


@asynccontextmanager
async def node_api(pki: Path, data: Path) -> AsyncIterator[tuple[ValidatorNode, int]]:
    async with sentinel_api(pki, data) as (node, url):
        yield node, int(url.rsplit(":", 1)[1])


@asynccontextmanager
async def dashboard(who: Identity, api_port: int) -> AsyncIterator[str]:
    """The dashboard, served in-process on a free port, reading the API as ``who``."""
    async with Upstream(who, "127.0.0.1", api_port) as upstream, trio.open_nursery() as nursery:
        url = await nursery.start(
            lambda task_status: serve_dashboard(
                upstream, 0, interval_s=0.2, task_status=task_status
            )
        )
        yield url.rstrip("/")
        nursery.cancel_scope.cancel()


async def submit(node: ValidatorNode, who: Identity, body: Message) -> None:
    reply = await node.submit(sign_transaction(who, node.core.chain_id, body), WAIT_S)
    assert reply.accepted, reply.reason


async def one_round(node: ValidatorNode, pki: Path) -> dict[str, str]:
    """Two SL members join, check in, agree on the merged root, report PERFDATA."""
    people = {name: identity(pki, name) for name in ("a", "b", "op", "swop")}
    for who in people.values():
        await submit(node, who, Join("", who.certificate.public_bytes(Encoding.DER)))
    for name in ("a", "b"):
        await submit(node, people[name], CheckIn(DEFAULT_CONTRACT, 1, b"r" * 32, 1, 2, LAYOUT, 200))
    for name in ("a", "b"):
        await submit(node, people[name], Merged(DEFAULT_CONTRACT, 1, 1, b"\xab" * 32))
    for name, loss in (("a", 0.9), ("b", 1.4)):
        await submit(node, people[name], PerfData(DEFAULT_CONTRACT, 1, loss, 0.5, 1, 2))
    for name in ("a", "b"):  # round 2: a reports b's chunks as not matching b's commitment
        await submit(node, people[name], CheckIn(DEFAULT_CONTRACT, 2, b"s" * 32, 1, 2, LAYOUT, 200))
    culprit = str(people["b"].peer_id)
    report = Exclude(DEFAULT_CONTRACT, 2, 1, culprit, "chunk 3 does not match its commitment")
    await submit(node, people["a"], report)
    return {name: str(who.peer_id) for name, who in people.items()}


async def one_task(node: ValidatorNode, pki: Path) -> None:
    """A SWOP task that runs and fails, with its reason on the ledger."""
    op, swop = identity(pki, "op"), identity(pki, "swop")
    body = canonical_json({"Command": "train.py", "Entrypoint": "python3"})
    for who, message in (
        (op, CreateTask("train", "RUN_SWARM", "ops", "ROOTTASK", "train-out", body)),
        (op, FinalizeTask("train")),
        (swop, EnrollTaskRunner(DEFAULT_TASKRUNNER)),
        (op, AssignTask("train", DEFAULT_TASKRUNNER)),
        (swop, TaskPeerStatus(DEFAULT_TASKRUNNER, "train", "RUNNING", "", 1)),
        (swop, TaskPeerStatus(DEFAULT_TASKRUNNER, "train", "ERROR", "exit status 2", 1)),
    ):
        await submit(node, who, message)


@pytest.mark.process
async def test_the_pages_show_nodes_contracts_a_round_and_its_curves(
    pki: Path, tmp_path: Path
) -> None:
    async with node_api(pki, tmp_path / "data") as (node, port):
        ids = await one_round(node, pki)
        await one_task(node, pki)
        async with dashboard(identity(pki, "op"), port) as url, httpx.AsyncClient() as http:
            overview = await http.get(url)
            rounds = await http.get(f"{url}/rounds")
            perf = await http.get(f"{url}/perf?contract={DEFAULT_CONTRACT}")
            tasks = await http.get(f"{url}/tasks")
            contracts = await http.get(f"{url}/contracts")
            proxied = await http.get(f"{url}/proxy/v1/nodes")
    assert overview.status_code == 200
    for peer in (*ids.values(), str(node.me)):
        assert f'data-node="{peer}"' in overview.text
    assert '<span class="badge this-node">this node</span>' in overview.text
    assert f'data-contract="{DEFAULT_CONTRACT}" data-last-round="2" data-done="1"' in overview.text
    assert "200 B" in overview.text  # the model's size, from the contract's layout
    row = re.search(r'<tr data-round="1" data-status="done">.*?</tr>', rounds.text)
    assert row is not None, rounds.text
    assert ids["a"][:10] in row[0]
    assert ids["b"][:10] in row[0]
    assert "ab" * 8 in row[0]  # the merged hash
    assert "(2 in, min 2)" in row[0]
    excluded = re.search(r'<tr data-round="2" data-status="(\w+)">.*?</tr>', rounds.text)
    assert excluded is not None, rounds.text
    assert f"{ids['b'][:10]}: chunk 3 does not match its commitment" in excluded[0]
    assert perf.text.count("<polyline") == 4  # two charts (loss, metric), a line per node
    loss_chart = perf.text.split("<h2>Metric</h2>")[0]
    assert f"{ids['a'][:10]} round 1: 0.9<" in loss_chart
    assert f"{ids['b'][:10]} round 1: 1.4<" in loss_chart
    assert '<tr data-task="train">' in tasks.text
    assert "RUN_SWARM" in tasks.text
    failed = f'<tr data-runner="{DEFAULT_TASKRUNNER}" data-state="ERROR">'
    runner = re.search(f"{failed}.*?</tr>", tasks.text)
    assert runner is not None, tasks.text
    assert ids["swop"][:10] in runner[0]
    assert "exit status 2" in runner[0]
    assert "fc.weight" in contracts.text
    assert "10 x 4" in contracts.text
    assert {m["node"] for m in proxied.json()} == {*ids.values(), str(node.me)}


@pytest.mark.process
async def test_the_event_stream_sends_what_changed(pki: Path, tmp_path: Path) -> None:
    async with (
        node_api(pki, tmp_path / "data") as (node, port),
        dashboard(identity(pki, "op"), port) as url,
        events(url, "contracts") as stream,
    ):
        first = await stream.next_data()
        assert DEFAULT_CONTRACT in first
        assert "lab-7" not in first
        op = identity(pki, "op")
        await submit(node, op, Join("", op.certificate.public_bytes(Encoding.DER)))
        await submit(node, op, CreateContract("lab-7"))
        with trio.fail_after(WAIT_S):
            while True:
                if "lab-7" in await stream.next_data():
                    break


class EventStream:
    """Reads a server-sent event stream off a raw socket (HTTP/1.0: no chunked framing)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def next_data(self) -> str:
        """The ``data:`` line of the next event that has one."""
        with trio.fail_after(WAIT_S):
            while True:
                while b"\n\n" not in self.buffer:
                    chunk = await self.stream.receive_some()
                    assert chunk, f"the event stream ended: {self.buffer[-300:]!r}"
                    self.buffer += chunk
                event, self.buffer = self.buffer.split(b"\n\n", 1)
                for line in event.decode().splitlines():
                    if line.startswith("data: "):
                        return line


@asynccontextmanager
async def events(url: str, page: str) -> AsyncIterator[EventStream]:
    host, port = url.split("//")[1].split(":")
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        request = f"GET /events?page={page} HTTP/1.0\r\nHost: {host}\r\n\r\n"
        await stream.send_all(request.encode())
        yield EventStream(stream)


@pytest.mark.process
async def test_ledger_views_are_read_again_only_when_the_height_moves(
    pki: Path, tmp_path: Path
) -> None:
    sources = ("status", "nodes", "contracts")
    async with (
        node_api(pki, tmp_path / "data") as (node, port),
        Upstream(identity(pki, "op"), "127.0.0.1", port) as upstream,
    ):
        previous = await upstream.snapshot(sources)
        assert previous.reused == 0
        with trio.fail_after(WAIT_S):  # the node may still be committing its own join
            while True:
                again = await upstream.snapshot(sources)
                same = again.data["status"]["height"] == previous.data["status"]["height"]
                assert again.reused == (2 if same else 0)
                if same:
                    break
                previous = again
        assert again.data["nodes"] == previous.data["nodes"]
        op = identity(pki, "op")
        await submit(node, op, Join("", op.certificate.public_bytes(Encoding.DER)))
        moved = await upstream.snapshot(sources)
    assert moved.reused == 0
    assert str(op.peer_id) in {m["node"] for m in moved.data["nodes"]}
    assert moved.data["status"]["height"] > again.data["status"]["height"]


@pytest.mark.process
async def test_errors_are_said_on_the_page(pki: Path, tmp_path: Path) -> None:
    async with node_api(pki, tmp_path / "data") as (_, port):
        stranger = identity(tmp_path / "other", "stranger", tmp_path / "other" / "both.pem")
        async with dashboard(stranger, port) as url, httpx.AsyncClient() as http:
            rejected = await http.get(url)
        async with dashboard(identity(pki, "op"), port) as url, httpx.AsyncClient() as http:
            unknown = await http.get(f"{url}/rounds?contract=nope")
            no_rounds = await http.get(f"{url}/rounds")
            no_perf = await http.get(f"{url}/perf")
            foreign = await http.get(url, headers={"Host": "dashboard.example"})
    assert rejected.status_code == 502
    assert "rejected the certificate of stranger" in rejected.text
    assert "issued by this swarm&#x27;s CA" in rejected.text
    assert f"no contract &#x27;nope&#x27; on this swarm; contracts: {DEFAULT_CONTRACT}" in (
        unknown.text
    )
    assert "no rounds yet in" in no_rounds.text
    assert "no PERFDATA for" in no_perf.text
    assert foreign.status_code == 400  # DNS rebinding: only loopback host names


@pytest.mark.process
async def test_an_unreachable_api_is_said_and_retried(pki: Path) -> None:
    with trio.socket.socket() as placeholder:
        await placeholder.bind(("127.0.0.1", 0))  # a port nobody listens on
        port = placeholder.getsockname()[1]
        async with dashboard(identity(pki, "op"), port) as url, httpx.AsyncClient() as http:
            page = await http.get(url)
            async with events(url, "overview") as stream:
                data = await stream.next_data()
    assert page.status_code == 502
    assert f"cannot reach the node API at https://127.0.0.1:{port}" in page.text
    assert "is swarm-node running there with --api" in data


def test_charts_and_sizes() -> None:
    assert charts.nice_ticks(0.13, 0.91) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert charts.nice_ticks(1, 1) == [1.0, 1.5, 2.0]
    assert charts.nice_ticks(1, 37) == [0.0, 10.0, 20.0, 30.0, 40.0]
    series = [model.Series("<node>", [(1.0, 0.5), (2.0, 0.25)])]
    svg = charts.line_chart("loss", series, "loss")
    assert svg.startswith("<svg")
    assert "&lt;node&gt;" in svg
    assert "<node>" not in svg
    assert "no loss reported yet" in charts.line_chart("loss", [], "loss")
    layout = [["w", "float32", [10, 4]], ["b", "bfloat16", [10]], ["n", "int64", []]]
    assert model.model_bytes(layout) == 160 + 20 + 8
    with pytest.raises(model.Missing, match="no training contract on the ledger yet"):
        model.choose_contract([], None)
    odd = Snapshot("https://node:30304", {"contracts": [{"rounds": []}], "perfdata": []})
    parts = render.sections("perf", odd, "", {})
    assert (
        "cannot show this page from what https://node:30304 answered (KeyError" in (parts["banner"])
    )


@contextmanager
def dashboard_process(pki: Path, api: str, *extra: str) -> Iterator[subprocess.Popen[str]]:
    ident = ["--cert", str(pki / "op.pem"), "--key", str(pki / "op-key.pem")]
    command = [sys.executable, "-m", "swarmlearn", "dashboard", "--api", api, "--port", "0"]
    command += [*ident, "--cacert", str(pki / "ca.pem"), *extra]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    ) as process:
        try:
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)


def read_url(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    seen = []
    for line in process.stdout:  # ends when the process does
        seen.append(line)
        if line.startswith("dashboard: http://127.0.0.1:"):
            return line.split()[1].rstrip("/")
    raise AssertionError(f"the dashboard printed no URL: {''.join(seen)}")


@pytest.mark.process
def test_the_command_prints_its_url_and_stops_on_sigterm(pki: Path) -> None:
    with dashboard_process(pki, "127.0.0.1:1") as process:
        url = read_url(process)
        page = httpx.get(url, timeout=WAIT_S)
        assert page.status_code == 502
        assert "cannot reach the node API" in page.text
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=WAIT_S)
    assert process.returncode == 0
    assert out.strip().endswith("dashboard stopped")


def test_bad_arguments_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard", "--api", "127.0.0.1:notaport", "--cert", "x.pem"]) == 2
    bad_api = capsys.readouterr().err
    assert bad_api.count("\n") == 1
    assert bad_api.startswith("swarmlearn: error: --api")
    assert main(["dashboard", "--api", "127.0.0.1:30304", "--cert", "/nonexistent/op.pem"]) == 2
    no_identity = capsys.readouterr().err
    assert no_identity.count("\n") == 1
    assert "swarmlearn: error: " in no_identity
    assert main(["dashboard", "--port", "70000", "--api", "127.0.0.1:1"]) == 2
    assert "--port: expected 0..65535, got 70000" in capsys.readouterr().err


def test_an_swci_context_names_the_api_and_the_identity(
    pki: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from swarmlearn.cli.main import build_parser
    from swarmlearn.dashboard.cli import resolve
    from swarmlearn.swci.contexts import Context, Contexts, save_contexts

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for variable in ("SWARM_ID_CERT", "SWARM_ID_KEY", "SWARM_ID_CACERT", "SWARM_ID_CAPATH"):
        monkeypatch.delenv(variable, raising=False)
    lab = Context("lab", "127.0.0.1", 40404, {}, pki / "op.pem", pki / "op-key.pem", pki / "ca.pem")
    save_contexts(Contexts({"lab": lab}, "lab"))
    parse = build_parser().parse_args
    host, port, who = resolve(parse(["dashboard", "--context", "lab"]))
    assert (host, port, who.info.name) == ("127.0.0.1", 40404, "op")
    host, port, who = resolve(parse(["dashboard"]))  # the active context
    assert (host, port, who.info.name) == ("127.0.0.1", 40404, "op")
    named = parse(["dashboard", "--context", "lab", "--cert", str(pki / "a.pem")])
    named.key = pki / "a-key.pem"  # explicit identity options win over the context's
    assert resolve(named)[2].info.name == "a"
    assert main(["dashboard", "--context", "lbb"]) == 2
    assert "no context 'lbb'" in capsys.readouterr().err


@pytest.mark.process
def test_a_port_in_use_is_one_line(pki: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ident = ["--cert", str(pki / "op.pem"), "--key", str(pki / "op-key.pem")]
        ident += ["--cacert", str(pki / "ca.pem")]
        assert main(["dashboard", "--api", "127.0.0.1:1", "--port", str(port), *ident]) == 2
    error = capsys.readouterr().err
    assert error == f"swarmlearn: error: --port {port}: 127.0.0.1:{port} is in use; " + (
        "choose another port (0: any free one)\n"
    )
