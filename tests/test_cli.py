"""The command line as a user runs it: certs, node checks, one-line errors, and real processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from swarmlearn.cli.main import main
from swarmlearn.errors import ConfigError
from swarmlearn.p2p.address import parse_host_port


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        status = main(list(argv))
    except SystemExit as exit_:  # argparse usage errors and --help
        status = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def swarm_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    assert run(capsys, "certs", "init", str(tmp_path))[0] == 0
    status, out, _ = run(
        capsys,
        "certs",
        "issue",
        "node-1",
        "--ca",
        str(tmp_path),
        "--host",
        "127.0.0.1",
        "--role",
        "sn",
        "--role",
        "sl",
    )
    assert status == 0, out
    return tmp_path


def test_certs_init_issue_and_show(swarm_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(
        capsys,
        "certs",
        "show",
        str(swarm_dir / "node-1.pem"),
        "--cacert",
        str(swarm_dir / "ca.pem"),
    )
    assert status == 0, err
    assert "name        node-1" in out
    assert "roles       sl, sn" in out
    assert "checked     chains to" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["certs", "issue", "x", "--ca", "/nonexistent", "--role", "sl"],
            "CA certificate /nonexistent/ca.pem: file does not exist",
        ),
        (["certs", "issue", "x", "--role", "admin"], "invalid choice: 'admin'"),
        (["certs", "issue", "x"], "the following arguments are required: --role"),
        (["certs", "init", "/tmp/x", "--days", "0"], "must be at least 1"),
        (
            ["node", "--check", "--cert", "/no/cert.pem", "--key", "/k", "--cacert", "/c"],
            "/c: file does not exist",
        ),
        (
            ["node", "--listen", "nohost:port", "--check"],
            "--listen 'nohost:port': port 'port' is not a number",
        ),
        (["ping", "1.2.3.4:5", "--count", "0"], "--count must be at least 1"),
        (["node", "--sentinel", "--bootstrap", "h:1", "--check"], "give only one"),
        (["ledger", "contracts", "h:99999"], "address 'h:99999': port 99999 is outside 0..65535"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    message: str,
) -> None:
    for name in ("SWARM_ID_CERT", "SWARM_ID_KEY", "SWARM_ID_CACERT", "SWARM_ID_CAPATH"):
        monkeypatch.delenv(name, raising=False)
    status, _, err = run(capsys, *argv)
    assert status == 2
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_node_without_identity_does_not_start(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SWARM_ID_CERT", "SWARM_ID_KEY", "SWARM_ID_CACERT", "SWARM_ID_CAPATH"):
        monkeypatch.delenv(name, raising=False)
    status, _, err = run(capsys, "node")
    assert status == 2
    assert err.strip() == (
        "swarmlearn: error: no identity: set --cert (or SWARM_ID_CERT), --key (or SWARM_ID_KEY), "
        "--cacert or --capath (or SWARM_ID_CACERT / SWARM_ID_CAPATH)"
    )


def test_node_check_reads_hpe_environment_names(
    swarm_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWARM_ID_CERT", str(swarm_dir / "node-1.pem"))
    monkeypatch.setenv("SWARM_ID_KEY", str(swarm_dir / "node-1-key.pem"))
    monkeypatch.setenv("SWARM_ID_CAPATH", str(swarm_dir))
    status, out, err = run(capsys, "node", "--check")
    assert status == 0, err
    assert out.startswith("identity ok: node-1, peer id ")


def test_ci_runs_swci_commands(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "ci", "HELP", "LIST")
    assert status == 0
    assert "LIST NODES" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["certs", "--help"],
        ["certs", "issue", "--help"],
        ["node", "--help"],
        ["ping", "--help"],
    ],
)
def test_help_everywhere(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    status, out, _ = run(capsys, *argv)
    assert status == 0
    assert "usage:" in out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:1", ("127.0.0.1", 1)),
        ("[::1]:30303", ("::1", 30303)),
        ("host", ("host", 30303)),
        ("[::1]", ("::1", 30303)),
    ],
)
def test_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text, field="x", default_port=30303) == expected


@pytest.mark.parametrize("text", ["::1", ":80", "h:99999", "[::1", "h:", "h:x"])
def test_bad_addresses(text: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"x {text!r}")):
        parse_host_port(text, field="x", default_port=30303)


@pytest.mark.process
def test_a_real_node_process_answers_a_real_ping_process(swarm_dir: Path, tmp_path: Path) -> None:
    """Two processes, real loopback sockets, real mutual TLS: swarm-node and swarmlearn ping."""
    ident = [
        "--cert",
        str(swarm_dir / "node-1.pem"),
        "--key",
        str(swarm_dir / "node-1-key.pem"),
        "--cacert",
        str(swarm_dir / "ca.pem"),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "swarmlearn.roles.node.daemon",
            "--sentinel",
            "--data",
            str(tmp_path / "data"),
            "--listen",
            "127.0.0.1:0",
            "--api",
            "none",
            *ident,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as node:
        try:
            assert node.stdout is not None
            banner = node.stdout.readline()  # blocks until the node listens (or dies)
            assert "listening on /ip4/127.0.0.1/tcp/" in banner
            port = banner.split("/tcp/")[1].split("/")[0]
            peer_id = banner.rsplit("/p2p/", 1)[1].strip()
            pinged = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "swarmlearn",
                    "ping",
                    f"127.0.0.1:{port}",
                    "--count",
                    "2",
                    *ident,
                ],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
            )
            assert pinged.returncode == 0, pinged.stderr
            assert f"peer id {peer_id}" in pinged.stdout
            assert pinged.stdout.count("pong") == 2
        finally:
            node.terminate()
            out, err = node.communicate(timeout=30)
        assert node.returncode == 0, err
        assert "swarm-node stopped" in out
