"""The suite's tiers (a pytest plugin, loaded by conftest.py).

Every test belongs to one tier, named by a marker:

- ``unit``: in-process, no sockets, no child processes; the default for an unmarked test.
- ``sim``: simulator scenarios and seed sweeps: in-process and deterministic like ``unit``,
  but seconds rather than milliseconds.
- ``process``: spawns processes (daemons, trainers) or opens real sockets (TCP, Unix).

``slow`` marks a test of any tier that takes over ~20 s, ``heavy`` one that trains for real
or runs many daemons for minutes (HPE's example scripts, the poisoning swarm). ``make check``
runs ``-m "not process and not slow"``; ``make test`` (CI) everything but ``heavy``; ``make
test-heavy`` the heavy ones.

The tiers are held, not trusted: while a ``unit`` or ``sim`` test runs, binding or connecting a
socket or starting a child process fails at once with a line that names the marker to add. A
socketpair (trio's wake-up pipe) is neither and stays allowed. Each tier has a per-test timeout
(``TIMEOUT_S``) unless the test sets its own with ``pytest.mark.timeout``.
"""

from __future__ import annotations

import ast
import itertools
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _pytest.mark.expression import Expression  # how pytest itself reads `-m`

TIERS = ("unit", "sim", "process")
MARKERS = (*TIERS, "slow", "heavy")
TIMEOUT_S = {"unit": 60, "sim": 180, "process": 300}


class TierViolation(RuntimeError):
    """A test of an in-process tier reached for a socket or a child process."""


def tier_of(item: pytest.Item) -> str:
    """The heaviest tier among the item's markers (a ``process`` test in a ``sim`` module is a
    ``process`` test); ``unit`` when it names none."""
    for name in reversed(TIERS):
        if item.get_closest_marker(name) is not None:
            return name
    return "unit"


def declared_markers(path: Path) -> set[str]:
    """The markers a test module's ``pytestmark`` names, read from its text (not imported)."""
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError, UnicodeDecodeError):
        return set()
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "pytestmark" for target in node.targets
        ):
            names |= {
                part.attr
                for part in ast.walk(node.value)
                if isinstance(part, ast.Attribute) and part.attr in MARKERS
            }
    return names


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Leave a module out without importing it when ``-m`` deselects every test it can hold:
    ``make check`` then pays nothing for the process tier's imports (TensorFlow, torch)."""
    expression = config.getoption("markexpr", "")
    if not expression or not collection_path.name.startswith("test_"):
        return None
    declared = declared_markers(collection_path)
    if not declared:
        return None
    compiled = Expression.compile(expression)
    others = [name for name in MARKERS if name not in declared]
    for count in range(len(others) + 1):
        for extra in itertools.combinations(others, count):
            names = declared | set(extra)

            def has(name: str, /, **_: str | int | bool | None) -> bool:
                return name in names  # noqa: B023 (called before the loop moves on)

            if compiled.evaluate(has):
                return None  # some test of this module could still be selected
    return True


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = tier_of(item)
        if item.get_closest_marker(tier) is None:
            item.add_marker(getattr(pytest.mark, tier))
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TIMEOUT_S[tier]))


def _refuse(what: str, nodeid: str) -> Callable[..., Any]:
    def refused(*_args: object, **_kwargs: object) -> Any:
        raise TierViolation(
            f"{nodeid} {what}, which its tier does not allow: "
            "mark it (or its module) pytest.mark.process"
        )

    return refused


@pytest.fixture(autouse=True)
def _hold_tier(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    if tier_of(request.node) == "process":
        yield
        return
    nodeid = request.node.nodeid
    for method in ("bind", "connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, method, _refuse(f"called socket.{method}", nodeid))
    monkeypatch.setattr(
        subprocess.Popen, "_execute_child", _refuse("started a child process", nodeid)
    )
    yield
