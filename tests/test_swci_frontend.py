"""SWCI's front ends without a swarm: one-shot commands, scripts, stdin, the REPL on a real
terminal (a pty), --json documents and the exit statuses scripts test (0, 1, 2)."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swarmlearn.swci.main import main

READ_WAIT_S = 30.0


@pytest.fixture(autouse=True)
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    for name in ("SWARM_ID_CERT", "SWARM_ID_KEY", "SWARM_ID_CACERT", "SWARM_ID_CAPATH"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "cfg" / "swarmlearn"


def swci(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        status = main(list(argv))
    except SystemExit as exit_:
        status = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


def test_one_shot_commands_and_their_exit_statuses(
    capsys: pytest.CaptureFixture[str], config_home: Path
) -> None:
    status, out, err = swci(capsys, "CREATE", "CONTEXT", "lab", "WITH", "IP", "127.0.0.1", "1")
    assert (status, err) == (0, "")
    assert out.startswith("context lab created: https://127.0.0.1:1 (no identity")
    assert (config_home / "contexts.json").exists()
    status, out, _ = swci(capsys, "SET", "CONTEXT", "ENV", "lab", "NOTE", "two words")
    assert status == 0
    assert swci(capsys, "GET", "CONTEXT", "ENV", "lab", "NOTE")[1] == "two words\n"
    status, _, err = swci(capsys, "LIST", "NODEZ")
    assert status == 2
    assert err == "error: LIST: expected " + err.split("expected ", 1)[1]
    assert "got 'NODEZ': did you mean NODES?" in err
    assert err.count("\n") == 1
    status, _, err = swci(capsys, "GET", "CONTEXT", "ENV", "lab", "MISSING")
    assert status == 2  # the user's mistake: a usage error
    assert "has no variable 'MISSING'" in err


def test_json_is_one_document_per_command(capsys: pytest.CaptureFixture[str]) -> None:
    swci(capsys, "CREATE", "CONTEXT", "lab", "WITH", "IP", "127.0.0.1", "1")
    status, out, _ = swci(capsys, "--json", "LIST", "CONTEXTS")
    assert status == 0
    document = json.loads(out)
    assert document["ok"] is True
    assert document["command"] == "LIST CONTEXTS"
    assert [c["name"] for c in document["result"]] == ["lab"]
    status, out, err = swci(capsys, "--json", "SWITCH", "CONTEXT", "lbs")
    assert status == 2
    failed = json.loads(out)
    assert (failed["ok"], failed["status"]) == (False, 2)
    assert "did you mean 'lab'?" in failed["error"]
    assert err.startswith("error: no context 'lbs'")


def test_a_script_runs_to_the_end_and_reports_the_worst_status(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    script = tmp_path / "swci-init"
    script.write_text(
        "# comments and blank lines are skipped\n\n"
        "CREATE CONTEXT a WITH IP 127.0.0.1 1\n"
        "LIST NODES\n"  # no identity in the context: a usage error (2), and the script goes on
        "CREATE CONTEXT b WITH IP 127.0.0.1 2\n"
        "SLEEP 0\n"
    )
    status, out, err = swci(capsys, "--script", str(script))
    assert status == 2
    assert "SWCI:0 > CREATE CONTEXT a WITH IP 127.0.0.1 1" in out  # the script is echoed
    assert "SWCI:2 > CREATE CONTEXT b WITH IP 127.0.0.1 2" in out
    assert "context 'a' has no cert, key, cacert" in err


@pytest.mark.process
def test_exit_on_failure_stops_at_the_first_failure_with_its_status(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    script = tmp_path / "swci-init"
    script.write_text(
        "EXIT ON FAILURE\n"
        "CREATE CONTEXT a WITH IP 127.0.0.1 1\n"
        "WAIT FOR IP 127.0.0.1 1 1\n"  # nothing listens on port 1: the command fails (1)
        "CREATE CONTEXT never WITH IP 127.0.0.1 2\n"
    )
    status, out, _ = swci(capsys, "--json", "--script", str(script))
    assert status == 1
    documents = [json.loads(line) for line in out.splitlines()]
    assert [d["ok"] for d in documents] == [True, True, False]
    assert "no answer after 1 try" in documents[-1]["error"]
    assert "never" not in swci(capsys, "LIST", "CONTEXTS")[1]


def test_exit_ends_a_script_early_and_stdin_is_a_script(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "swci-init"
    script.write_text("CREATE CONTEXT a WITH IP 127.0.0.1 1\nEXIT\nCREATE CONTEXT b WITH IP h\n")
    assert swci(capsys, "--script", str(script))[0] == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO("LIST CONTEXTS\nPWD\n"))
    status, out, _ = swci(capsys)
    assert status == 0
    assert "SWCI:0 > LIST CONTEXTS" in out
    assert "*  a" in out
    assert "b" not in out.split("NAME", 1)[1].split("\n")[1]


def test_usage_mistakes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, _, err = swci(capsys, "--script", str(tmp_path / "missing"))
    assert status == 2
    assert err.startswith(f"swci: error: --script {tmp_path / 'missing'}: cannot read")
    script = tmp_path / "s"
    script.write_text("HELP\n")
    status, _, err = swci(capsys, "--script", str(script), "LIST", "NODES")
    assert (status, err) == (2, "swci: error: give either --script FILE or a command, not both\n")
    status, _, err = swci(capsys, "--cert", str(tmp_path / "op.pem"), "LIST", "CONTEXTS")
    assert status == 2
    assert "no identity: set --key" in err


def _read_until(fd: int, wanted: bytes, seen: bytearray) -> None:
    deadline = time.monotonic() + READ_WAIT_S
    while wanted not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {wanted!r} in {bytes(seen)!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            seen += os.read(fd, 4096)


@pytest.mark.process
def test_the_repl_prompts_completes_is_interruptible_and_keeps_history(config_home: Path) -> None:
    leader, follower = pty.openpty()
    env = {**os.environ, "XDG_CONFIG_HOME": str(config_home.parent), "TERM": "dumb"}
    command = [sys.executable, "-m", "swarmlearn.swci.main"]
    with subprocess.Popen(command, stdin=follower, stdout=follower, stderr=follower, env=env) as p:
        os.close(follower)
        try:
            seen = bytearray()
            _read_until(leader, b"SWCI:0 > ", seen)
            os.write(leader, b"CREATE CONTEXT lab WITH IP 127.0.0.1 1\r")
            _read_until(leader, b"SWCI:1 > ", seen)
            os.write(leader, b"get context in\t\r")  # tab completes INFO
            _read_until(leader, b"SWCI:2 > ", seen)
            assert b"url     https://127.0.0.1:1" in seen.split(b"SWCI:1 > ")[1]
            os.write(leader, b"WAIT FOR IP 127.0.0.1 1 100\r")  # nothing there: it waits
            _read_until(leader, b"#", seen)  # the first try failed; the next is 5 s away
            p.send_signal(signal.SIGINT)  # Ctrl-C stops the command, not the session
            _read_until(leader, b"SWCI:3 > ", seen)
            assert b"interrupted" in seen.split(b"SWCI:2 > ")[1]
            os.write(leader, b"EXIT\r")
            assert p.wait(timeout=READ_WAIT_S) == 0
        finally:
            if p.poll() is None:
                p.kill()
    os.close(leader)
    history = (config_home / "swci_history").read_text().splitlines()
    assert history[-3:] == ["get context INFO ", "WAIT FOR IP 127.0.0.1 1 100", "EXIT"]
