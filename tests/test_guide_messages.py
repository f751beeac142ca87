"""docs/troubleshooting.md quotes what the tools print: each quoted message is produced here
for real (throwaway certificates, real files, real swarm-node and swarmlearn processes) and
must appear in the page word for word, paths and ports mapped to the page's examples."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from swarmlearn.cli.common import ArgumentParser
from swarmlearn.consensus.ledger.rounds import layout_difference
from swarmlearn.consensus.ledger.txs import TensorSpec
from swarmlearn.errors import ConfigError
from swarmlearn.p2p.certs import create_ca, issue_certificate
from swarmlearn.p2p.identity import IdentityPaths, Role, identity_paths_from_env, load_identity
from swarmlearn.roles.node.config import resolve
from swarmlearn.roles.node.daemon import add_node_arguments, node_options

PAGE = (Path(__file__).resolve().parent.parent / "docs" / "troubleshooting.md").read_text()
NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)  # before bad/future.pem's validity


def quoted(line: str) -> None:
    assert line in PAGE, f"docs/troubleshooting.md does not quote: {line}"


def config_error(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        call(*args, **kwargs)
    return str(caught.value)


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The page's layout: run/ca (the swarm's CA, n0, n1) and bad/ (other CA, odd files)."""
    monkeypatch.chdir(tmp_path)
    ca = create_ca(Path("run/ca"))
    other = create_ca(Path("bad/other"), name="another swarm")
    for name in ("n0", "n1"):
        issue_certificate(ca, name, Path("run/ca"), hosts=["127.0.0.1"], roles=[Role.SN, Role.SL])
    issue_certificate(other, "x", Path("bad/other"), hosts=[], roles=[Role.SN, Role.SL])
    for name, start, days in (("old", "2026-01-01", 1), ("future", "2027-01-01", 30)):
        not_before = dt.datetime.fromisoformat(f"{start}T10:00:00+00:00")
        issue_certificate(
            ca, name, Path("bad"), hosts=[], roles=[Role.SL], not_before=not_before, days=days
        )
    key = serialization.load_pem_private_key(Path("run/ca/n0-key.pem").read_bytes(), None)
    secret = serialization.BestAvailableEncryption(b"secret")
    Path("bad/enc-key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, secret)
    )
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    Path("bad/rsa-key.pem").write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return tmp_path


IDENTITY_CASES = [
    ("run/ca/nope.pem", "run/ca/n0-key.pem", "run/ca/ca.pem"),
    ("run/ca/n0.pem", "run/ca/n1-key.pem", "run/ca/ca.pem"),
    ("bad/old.pem", "bad/old-key.pem", "run/ca/ca.pem"),
    ("bad/future.pem", "bad/future-key.pem", "run/ca/ca.pem"),  # checked as of NOW
    ("bad/other/x.pem", "bad/other/x-key.pem", "run/ca/ca.pem"),
    ("run/ca/n0.pem", "run/ca/n0-key.pem", "run/ca/n1.pem"),
    ("run/ca/n0.pem", "run/ca/n0-key.pem", "bad"),
    ("run/ca/n0-key.pem", "run/ca/n0-key.pem", "run/ca/ca.pem"),
    ("run/ca/n0.pem", "run/ca/n0.pem", "run/ca/ca.pem"),
    ("run/ca/n0.pem", "bad/enc-key.pem", "run/ca/ca.pem"),
    ("run/ca/n0.pem", "bad/rsa-key.pem", "run/ca/ca.pem"),
]


@pytest.mark.parametrize(("cert", "key", "ca"), IDENTITY_CASES)
def test_identity_errors_are_quoted(files: Path, cert: str, key: str, ca: str) -> None:
    paths = IdentityPaths(Path(cert), Path(key), Path(ca))
    now = NOW if cert == "bad/future.pem" else None  # the others: as of today
    quoted(f"swarm-node: error: {config_error(load_identity, paths, now=now)}")


def test_no_identity_is_quoted() -> None:
    quoted(f"swarm-node: error: {config_error(identity_paths_from_env, {})}")


def test_layout_differences_are_quoted() -> None:
    def spec(name: str, dtype: str, *shape: int) -> TensorSpec:
        return TensorSpec(name, dtype, shape)

    contract = (
        spec("0.weight", "float32", 64, 64),
        spec("fc.bias", "float32", 10),
        spec("x.weight", "float32", 1),
        spec("head.weight", "float32", 10, 64),
    )
    variants = [
        (spec("0.weight", "float32", 32, 64), *contract[1:]),
        (*contract[:3], spec("fc.weight", "float32", 10, 64)),
        (contract[0], spec("fc.bias", "float64", 10), *contract[2:]),
        (*contract, spec("extra.weight", "float32", 1)),
    ]
    for got in variants:
        quoted(layout_difference(contract, got))
    quoted(layout_difference(contract, contract[:1]))


def test_config_mistakes_are_quoted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("bad1.toml").write_text('listen = "127.0.0.1:30303"\ndatadir = "x"\n')
    Path("bad2.toml").write_text("listen = 30303\n")
    Path("bad3.toml").write_text('listen = "a\n')

    def parsed(*argv: str) -> argparse.Namespace:
        parser = ArgumentParser(prog="swarm-node")
        add_node_arguments(parser)
        return parser.parse_args(argv)

    unknown = config_error(resolve, parsed("--config", "bad1.toml"))
    quoted(f"swarm-node: error: {unknown.split('; valid:')[0]}; valid: advertise, api, ")
    argv: tuple[str, ...]
    for argv in (
        ("--config", "bad2.toml"),
        ("--config", "bad3.toml"),
        ("--sentinel-ip", "1.2.3.4", "--bootstrap", "1.2.3.4"),
    ):
        quoted(f"swarm-node: error: {config_error(resolve, parsed(*argv))}")
    for argv in (
        ("--listen", "1.2.3.4:99999"),
        ("--listen", "::1:30303"),
        ("--sentinel", "--bootstrap", "1.2.3.4:5"),
    ):
        quoted(f"swarm-node: error: {config_error(node_options, resolve(parsed(*argv)))}")


def test_callback_mistakes_are_quoted(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    from swarmlearn.callback.pytorch import SwarmCallback

    monkeypatch.setenv("SWARM_LOOPBACK", "True")
    model = torch.nn.Linear(4, 2)
    for options in (
        {"nodeWeightage": 500},
        {"mergeMethod": "average"},
        {"checkinModelOnTrainEnd": "last"},
        {"lossFunction": "CrossEntropy"},
        {"useAdaptiveSync": True},
        {"nodeWeightge": 5},
    ):
        message = config_error(SwarmCallback, syncFrequency=10, minPeers=2, model=model, **options)
        if "unknown option" in message:
            message = message.split(" Valid: ")[0] + " Valid: adsValBatchSize, adsValData, ..."
        quoted(f"SwarmError: {message}")  # uncaught: one line (callback.core.one_line_hook)


# ---------------------------------------------------------------- real processes


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    """``swarmlearn ARGV`` with SWCI's contexts kept in the test's directory."""
    return subprocess.run(
        [sys.executable, "-m", "swarmlearn", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "XDG_CONFIG_HOME": str(Path("xdg").resolve())},
    )


@pytest.fixture
def sentinel(files: Path) -> Iterator[tuple[int, int]]:
    """A real sentinel (n0 of run/ca) on free ports; its peer and API ports."""
    node = subprocess.Popen(
        [sys.executable, "-m", "swarmlearn", "node", "--sentinel", "--data-dir", "n0",
         "--cert", "run/ca/n0.pem", "--key", "run/ca/n0-key.pem", "--cacert", "run/ca/ca.pem",
         "--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    try:
        assert node.stdout is not None
        deadline = time.monotonic() + 60
        line = ""
        while "listening on" not in line:
            left_s = max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([node.stdout], [], [], left_s)
            assert ready, "the sentinel printed no ready line within 60 s"
            line = node.stdout.readline()
            assert line, "the sentinel exited before it was ready"
        api = line.split("api https://127.0.0.1:")[1]
        yield int(line.split("/tcp/")[1].split("/")[0]), int(api)
    finally:
        node.terminate()
        node.wait(timeout=30)
        if node.stdout is not None:
            node.stdout.close()


@pytest.mark.process
def test_tls_and_reachability_messages_are_quoted(sentinel: tuple[int, int]) -> None:
    port = sentinel[0]
    Path("bad/both.pem").write_bytes(
        Path("bad/other/ca.pem").read_bytes() + Path("run/ca/ca.pem").read_bytes()
    )
    foreign = ("--cert", "bad/other/x.pem", "--key", "bad/other/x-key.pem")
    address = f"127.0.0.1:{port}"

    def page(text: str) -> str:
        return text.strip().replace(address, "127.0.0.1:30303")

    ping = run("ping", address, "--count", "1", *foreign, "--cacert", "bad/other/ca.pem")
    assert ping.returncode == 1
    quoted(page(ping.stderr))
    ping = run("ping", address, "--count", "1", *foreign, "--cacert", "bad/both.pem")
    assert ping.returncode == 1
    quoted(page(ping.stderr))
    status = run("ledger", "status", address, *foreign, "--cacert", "bad/both.pem")
    assert status.returncode == 1
    quoted(page(status.stderr))
    joiner = run(
        "node", "--bootstrap", address, "--data-dir", "x", *foreign, "--cacert", "bad/both.pem",
        "--listen", "127.0.0.1:0", "--api", "none",
    )  # fmt: skip
    assert joiner.returncode == 2
    quoted(page(joiner.stderr.replace("swarmlearn: error:", "swarm-node: error:")))

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    nobody = f"127.0.0.1:{closed.getsockname()[1]}"
    try:
        mine = (
            "--cert",
            "run/ca/n1.pem",
            "--key",
            "run/ca/n1-key.pem",
            "--cacert",
            "run/ca/ca.pem",
        )
        ping = run("ping", nobody, *mine)
        quoted(ping.stderr.strip().replace(nobody, "127.0.0.1:30399"))
        status = run("ledger", "status", nobody, *mine)
        quoted(status.stderr.strip().replace(nobody, "127.0.0.1:30399"))
    finally:
        closed.close()


GUIDE_PAGES = (
    "README",
    "quickstart",
    "concepts",
    "configuration",
    "certificates",
    "networking",
    "operations",
    "troubleshooting",
)


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lowercase, punctuation dropped, spaces to dashes."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("name", GUIDE_PAGES)
def test_the_guide_links_resolve(name: str) -> None:
    docs = Path(__file__).resolve().parent.parent / "docs"
    text = (docs / f"{name}.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+\.md)(?:#([\w-]+))?\)", text)
    assert links or name == "configuration"
    for target, anchor in links:
        page = docs / target
        assert page.is_file(), f"docs/{name}.md links to {target}, which does not exist"
        if anchor:
            assert anchor in _anchors(page), f"docs/{name}.md links to {target}#{anchor}"


def test_a_bad_merge_method_parameter_is_quoted(monkeypatch: pytest.MonkeyPatch) -> None:
    from swarmlearn.callback.core import SwarmError
    from swarmlearn.callback.pytorch import SwarmCallback

    monkeypatch.setenv("SWARM_LOOPBACK", "True")
    with pytest.raises(SwarmError) as caught:
        SwarmCallback(
            10, 2, model=torch.nn.Linear(2, 2), mergeMethod="trimmedmean:trim_fraction=0.7"
        )
    quoted(f"SwarmError: {caught.value}")


@pytest.mark.process
def test_swci_messages_are_quoted(sentinel: tuple[int, int]) -> None:
    api = sentinel[1]
    foreign = ("--cert", "bad/other/x.pem", "--key", "bad/other/x-key.pem")
    Path("bad/both.pem").write_bytes(
        Path("bad/other/ca.pem").read_bytes() + Path("run/ca/ca.pem").read_bytes()
    )
    for context, cacert in (("c1", "bad/other/ca.pem"), ("c2", "bad/both.pem")):
        made = run("ci", *foreign, "--cacert", cacert, "CREATE", "CONTEXT", context, "WITH", "IP",
                   "127.0.0.1", str(api))  # fmt: skip
        assert made.returncode == 0, made.stderr
        listed = run("ci", "--context", context, "LIST", "NODES")
        assert listed.returncode == 1
        quoted(listed.stderr.strip().replace(f"127.0.0.1:{api}", "127.0.0.1:48304"))
