"""Callback-side mishaps (issue 16): a script started before its node waits for the node's
socket, within a bound; a model that is not its contract's is one SwarmError naming the
fixes; an uncaught SwarmError ends a script with one line, no traceback. Clock and sleep are
handed in: nothing here waits."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from swarmlearn.callback.core import SwarmError, mismatch_line, one_line_hook
from swarmlearn.callback.node_wait import SAY_EVERY_S, connect_when_ready
from swarmlearn.errors import ConfigError


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, delay_s: float) -> None:
        self.now += delay_s


def node_up_at(up_s: float, time: FakeTime) -> Callable[[Path], str]:
    def connect(path: Path) -> str:
        if time.now < up_s:
            raise ConfigError(f"{path}: no swarm node's local endpoint here")
        return "client"

    return connect


def test_a_script_started_before_its_node_waits_and_says_so_every_10_s() -> None:
    time, said = FakeTime(), list[str]()
    connect = node_up_at(25.0, time)
    client = connect_when_ready(
        Path("d/sl.sock"), connect, 300.0, said.append, clock=time.clock, sleep=time.sleep
    )
    assert client == "client"
    assert 25.0 <= time.now < 25.5
    assert len(said) == 3  # at 0, 10 and 20 s
    assert all("waiting for the swarm node's local endpoint at d/sl.sock" in s for s in said)
    assert "(10 s of 300 s" in said[1]
    assert SAY_EVERY_S == 10.0


def test_a_node_that_never_comes_is_one_line_at_the_bound() -> None:
    time, said = FakeTime(), list[str]()
    with pytest.raises(ConfigError) as caught:
        connect_when_ready(
            Path("d/sl.sock"),
            node_up_at(1e9, time),
            30.0,
            said.append,
            clock=time.clock,
            sleep=time.sleep,
        )
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("no swarm node answered at d/sl.sock within 30 s")
    assert "SWARM_NODE_SOCKET" in message
    assert 30.0 <= time.now < 30.5
    assert len(said) == 3


def test_a_model_that_is_not_the_contracts_names_the_tensor_and_the_fixes() -> None:
    detail = "trainingContract 'c': this model differs from the contract's: tensor 0 is 'k'"
    line = mismatch_line("c", detail)
    assert "tensor 0 is 'k'" in line
    assert "trainingContract='NAME'" in line
    assert "RESET CONTRACT c" in line
    assert "trainingContract 'c': this" not in line  # said once


def test_an_uncaught_swarm_error_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    others: list[type[BaseException]] = []
    hook = one_line_hook(lambda kind, error, tb: others.append(kind))
    try:
        raise SwarmError("minPeers must be >= 1, got 0")
    except SwarmError as error:
        hook(SwarmError, error, error.__traceback__)
    assert capsys.readouterr().err == "SwarmError: minPeers must be >= 1, got 0\n"
    hook(ValueError, ValueError("x"), None)
    assert others == [ValueError]
    assert sys.excepthook is not hook
