"""Structured logs: ``--log-format json`` (TOML ``log-format``, env ``SWARM_LOG_FORMAT``): a
real ``swarm-node``'s stderr is one JSON object per line, naming the node; the setting's
precedence, and a bad value as one clear line."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from pathlib import Path

import pytest

from swarmlearn.cli.common import ArgumentParser
from swarmlearn.errors import ConfigError
from swarmlearn.p2p.identity import IdentityPaths, load_identity
from swarmlearn.roles.node.config import resolve
from swarmlearn.roles.node.daemon import add_node_arguments, main
from swarmlearn.roles.node.logs import JsonFormatter
from tests.test_real_swarm import make_pki, node_process

KEYS = {"time", "level", "logger", "message", "node", "peer_id"}


def parse(*argv: str) -> argparse.Namespace:
    parser = ArgumentParser(prog="swarm-node")
    add_node_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.process
def test_a_real_node_logs_one_json_object_per_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = make_pki(tmp_path, 1, operator=False)
    me = load_identity(IdentityPaths(pki / "sn0.pem", pki / "sn0-key.pem", pki / "ca.pem"))
    monkeypatch.setenv("SWARM_LOG_FORMAT", "json")
    flags = ("--sentinel", "--listen", "127.0.0.1:0", "--log-level", "debug")
    with node_process(pki, "sn0", tmp_path / "node", *flags) as (process, _):
        pass  # the node is up (its ready line came); leaving stops it with SIGTERM
    assert process.returncode == 0
    lines = (tmp_path / "node" / "stderr.log").read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # every line, or this raises
    assert len(entries) >= 2
    for entry in entries:
        assert set(entry) >= KEYS, entry
        assert entry["node"] == "sn0"
        assert entry["peer_id"] == str(me.peer_id)
        assert entry["level"] in ("debug", "info", "warning", "error", "critical")
        moment = dt.datetime.fromisoformat(entry["time"].replace("Z", "+00:00"))
        assert entry["time"].endswith("Z")
        assert moment.utcoffset() == dt.timedelta(0)
    said = {(entry["logger"], entry["message"]) for entry in entries}
    assert ("swarmlearn.node", "SIGTERM received, stopping") in said
    assert any(logger == "hypercorn.error" for logger, _ in said)  # the API server's too


def test_flag_then_file_then_environment_then_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SWARM_LOG_FORMAT", raising=False)
    assert resolve(parse()).log_format == "text"
    monkeypatch.setenv("SWARM_LOG_FORMAT", "json")
    assert resolve(parse()).log_format == "json"
    config = tmp_path / "node.toml"
    config.write_text('log-format = "text"\n')
    assert resolve(parse("--config", str(config))).log_format == "text"
    assert resolve(parse("--config", str(config), "--log-format", "json")).log_format == "json"


@pytest.mark.parametrize(
    ("argv", "environment", "message"),
    [
        (["--log-format", "xml"], "", "log-format 'xml' is not one of: text, json"),
        (["--log-format", "JSON"], "", "log-format 'JSON' is not one of: text, json"),
        ([], "yaml", "SWARM_LOG_FORMAT 'yaml' is not one of: text, json"),
    ],
)
def test_a_bad_format_is_one_clear_line(
    argv: list[str],
    environment: str,
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SWARM_LOG_FORMAT", environment)
    with pytest.raises(ConfigError, match=message):
        resolve(parse(*argv))
    assert main([*argv, "--check"]) == 2
    assert capsys.readouterr().err == f"swarm-node: error: {message}\n"


def test_a_bad_format_in_the_file_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("log-format = 3\n")
    with pytest.raises(ConfigError, match=r"log-format must be a non-empty string"):
        resolve(parse("--config", str(config)))


def test_an_exception_travels_inside_its_json_object() -> None:
    formatter = JsonFormatter("sn-1", "abc")
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x.y", logging.ERROR, __file__, 1, "failed: %s", ("it",), None)
        record.exc_info = sys.exc_info()
    entry = json.loads(formatter.format(record))
    assert entry["message"] == "failed: it"
    assert entry["level"] == "error"
    assert entry["logger"] == "x.y"
    assert entry["exception"].splitlines()[-1] == "ValueError: boom"
    assert "\n" not in formatter.format(record)  # one line, whatever the traceback
