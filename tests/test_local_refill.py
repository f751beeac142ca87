"""The trainer refills its handover file when the node asks (roles/local/endpoint.py, trainers.py),
over the real Unix socket and a real shared mapping.

A stand-in node (the real :class:`LocalEndpoint`, its callbacks playing the round) writes
other bytes over the contribution in the handover file, as merged pieces do, then asks the
trainer for its weights again (``LocalRefill``). The endpoint hashes what the trainer wrote;
the round's check (the committed chunk hashes) is done here on those hashes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import trio

from swarmlearn.merge import ModelState, flatten, layout_of
from swarmlearn.merge.manifest import Layout
from swarmlearn.p2p.wire import Message
from swarmlearn.roles.local.endpoint import (
    LocalClient,
    LocalContribute,
    LocalEndpoint,
    LocalRefill,
    LocalRefilled,
    LocalRoundDone,
    LocalRoundFailed,
)

pytestmark = pytest.mark.process

CONTRACT = "refill-test"


class StandInNode:
    """Takes a contribution, scribbles over the file, asks for a refill, checks it."""

    def __init__(self) -> None:
        self.committed: tuple[bytes, ...] = ()
        self.refilled: list[tuple[bool, str, bool]] = []  # ok, reason, hashes match
        self.reply: Callable[[Message], None] | None = None
        self.view: memoryview | None = None

    def on_contribute(
        self,
        message: LocalContribute,
        reply: Callable[[Message], None],
        hashes: tuple[bytes, ...],
        session: int = 0,
    ) -> None:
        self.committed, self.reply = hashes, reply
        self.view = memoryview(message.data)
        self.view[:] = bytes(len(self.view))  # merged bytes landing over the weights
        if message.refill:
            reply(LocalRefill(1, 1))
        else:  # as the round core does for a trainer that cannot refill: it sits out
            self.view.release()
            reply(LocalRoundFailed(1, "attempt 1 needs the weights merged over", True))

    def on_refilled(
        self, contract: str, message: LocalRefilled, hashes: tuple[bytes, ...], session: int = 0
    ) -> None:
        assert contract == CONTRACT
        assert self.reply is not None
        assert self.view is not None
        same = hashes == self.committed
        self.refilled.append((message.ok, message.reason, same))
        if message.ok and same:
            self.reply(LocalRoundDone(1, b"root", self.view))
        else:
            self.reply(LocalRoundFailed(1, message.reason or "not the committed weights", True))
        self.view.release()
        self.view = None


@contextmanager
def endpoint(tmp_path: Path, node: StandInNode) -> Iterator[Path]:
    path = tmp_path / "sl.sock"
    local = LocalEndpoint(path, node.on_contribute, node.on_refilled)
    token: list[trio.lowlevel.TrioToken] = []
    cancel = trio.CancelScope()
    ready = threading.Event()

    async def serve() -> None:
        token.append(trio.lowlevel.current_trio_token())
        with cancel:
            async with trio.open_nursery() as nursery:
                await nursery.start(local.serve)
                ready.set()

    thread = threading.Thread(target=trio.run, args=(serve,), daemon=True)
    thread.start()
    assert ready.wait(10), "the endpoint did not start"
    try:
        yield path
    finally:
        trio.from_thread.run_sync(cancel.cancel, trio_token=token[0])
        thread.join(10)


def weights() -> tuple[Layout, ModelState]:
    rng = np.random.default_rng(5)
    state = ModelState({"w": rng.standard_normal((64, 50)).astype(np.float32)})
    return layout_of(state, chunk_bytes=1024), state


def test_flat_bytes_are_copied_back_into_the_file(tmp_path: Path) -> None:
    layout, state = weights()
    flat = bytes(flatten(state, layout))
    node = StandInNode()
    with endpoint(tmp_path, node) as path, LocalClient(path, timeout_s=20) as client:
        outcome = client.sync_round(CONTRACT, layout, flat)
    assert node.refilled == [(True, "", True)]
    assert outcome.merged is not None  # (a stand-in "merge": the refilled weights)
    assert bytes(outcome.merged) == flat


def test_a_model_flattened_into_the_file_is_flattened_again(tmp_path: Path) -> None:
    layout, state = weights()
    node = StandInNode()
    with endpoint(tmp_path, node) as path, LocalClient(path, timeout_s=20) as client:
        staging = client.staging(layout.total_bytes)
        assert staging is not None
        flat = flatten(state, layout, out=staging)  # as the SwarmCallback hands it over

        def refill(out: memoryview) -> None:
            flatten(state, layout, out=out)

        outcome = client.sync_round(CONTRACT, layout, flat, refill=refill)
        assert outcome.merged is not None
        assert bytes(outcome.merged) == bytes(flatten(state, layout))
    assert node.refilled == [(True, "", True)]


@pytest.mark.parametrize("case", ["no refill", "other bytes", "refill raises"])
def test_a_trainer_that_cannot_refill_sees_the_round_fail(tmp_path: Path, case: str) -> None:
    layout, state = weights()
    node = StandInNode()
    with endpoint(tmp_path, node) as path, LocalClient(path, timeout_s=20) as client:
        staging = client.staging(layout.total_bytes)
        assert staging is not None
        flat = flatten(state, layout, out=staging)

        def refill(out: memoryview) -> None:
            if case == "refill raises":
                raise RuntimeError("the model is gone")
            out[:] = bytes(len(out))

        if case == "no refill":  # the file was the weights: without a refill, they are gone
            outcome = client.sync_round(CONTRACT, layout, flat, refill=None)
        else:
            outcome = client.sync_round(CONTRACT, layout, flat, refill=refill)
    assert outcome.merged is None
    assert outcome.overwritten
    expected = {
        "no refill": [],  # the trainer said so with its weights: the node never asks
        "other bytes": [(True, "", False)],
        "refill raises": [(False, "RuntimeError: the model is gone", False)],
    }
    assert node.refilled == expected[case]
