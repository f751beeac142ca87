"""Real processes: one validator of four with its clock 10 minutes ahead (BFT time).

``SWARMLEARN_CLOCK_OFFSET_S=600`` shifts sn3's clock (its vote times and timers). Block time
is the median of the last commit's vote times, so the ledger keeps the others' time while
sn3 votes and proposes (its blocks too carry the median), and the chain goes on with sane
times once it has left. The ledger shows block time as the operator's ``last_seen_ms``
(the time of the block that held its last transaction).
"""

from __future__ import annotations

import json
import signal
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives.serialization import Encoding

from swarmlearn.consensus.ledger.txs import CreateContract, Join
from swarmlearn.p2p.identity import Identity, IdentityPaths, load_identity
from swarmlearn.roles.api.messages import LedgerQuery, LedgerReply
from swarmlearn.roles.node.node import CLOCK_OFFSET_ENV, ask
from tests.test_real_swarm import _submit, make_pki, node_process, wait_for

pytestmark = [pytest.mark.process, pytest.mark.slow]

NODES = 4
SKEW_S = 600
TXS = 12  # one at a time, at nodes in turn: sn3 proposes some of these blocks
SANE_S = 30.0  # block time within this of the test's clock (the honest nodes' host clock)


async def operator_block_time_ms(operator: Identity, port: int) -> int:
    """The time of the block that held the operator's last transaction."""
    reply = await ask(operator, "127.0.0.1", port, LedgerQuery("members"), LedgerReply)
    [me] = [m for m in json.loads(reply.json) if m["roles"] == ["swci"]]
    return int(me["last_seen_ms"])


async def submit_and_time(operator: Identity, port: int, name: str) -> tuple[int, float]:
    """Commit a contract; (its block time in ms, the host clock afterwards in s)."""
    await _submit(operator, port, CreateContract(name))
    return await operator_block_time_ms(operator, port), time.time()


async def exercise(operator: Identity, ports: list[int], skewed: ExitStack) -> None:
    await wait_for(
        operator, ports, "4 validators", lambda s: all(len(x.validators) == NODES for x in s)
    )
    await _submit(operator, ports[0], Join("", operator.certificate.public_bytes(Encoding.DER)))
    for index in range(TXS):
        block_ms, now_s = await submit_and_time(operator, ports[index % NODES], f"c{index}")
        assert -SANE_S < now_s - block_ms / 1000 < SANE_S, (index, now_s, block_ms)
    skewed.close()  # sn3 leaves (SIGTERM); three of four validators are a quorum
    honest = ports[:3]
    for index in range(TXS, TXS + 6):
        block_ms, now_s = await submit_and_time(operator, honest[index % 3], f"c{index}")
        assert -SANE_S < now_s - block_ms / 1000 < SANE_S, (index, now_s, block_ms)


def test_a_validator_ten_minutes_ahead_moves_no_block_time_and_leaving_halts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = make_pki(tmp_path)
    operator = load_identity(
        IdentityPaths(pki / "operator.pem", pki / "operator-key.pem", pki / "ca.pem")
    )
    data = [tmp_path / f"node{i}" for i in range(NODES)]
    listen = ["--listen", "127.0.0.1:0"]
    with ExitStack() as stack, ExitStack() as skewed:
        _, port0 = stack.enter_context(node_process(pki, "sn0", data[0], "--sentinel", *listen))
        join = ["--bootstrap", f"127.0.0.1:{port0}", *listen]
        ports = [port0]
        for index in (1, 2):
            ports.append(
                stack.enter_context(node_process(pki, f"sn{index}", data[index], *join))[1]
            )
        monkeypatch.setenv(CLOCK_OFFSET_ENV, str(SKEW_S))
        process, port3 = skewed.enter_context(node_process(pki, "sn3", data[3], *join))
        monkeypatch.delenv(CLOCK_OFFSET_ENV)
        ports.append(port3)
        trio.run(exercise, operator, ports, skewed)
        assert process.returncode == -signal.SIGTERM or process.returncode == 0
