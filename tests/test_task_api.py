"""The node API's task and taskrunner endpoints over mutual TLS, fed by signed transactions."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from swarmlearn.consensus.ledger.app import sign_transaction
from swarmlearn.consensus.ledger.tasks import (
    DEFAULT_TASKRUNNER,
    AssignTask,
    CreateTask,
    EnrollTaskRunner,
    FinalizeTask,
    TaskPeerStatus,
    canonical_json,
)
from swarmlearn.consensus.ledger.txs import Join
from swarmlearn.p2p.identity import Identity, Role
from swarmlearn.p2p.tls import client_context
from swarmlearn.p2p.wire import Message
from swarmlearn.roles.node.node import ValidatorNode
from tests.api_helpers import api_pki, identity

pytestmark = pytest.mark.process


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    return api_pki(tmp_path / "pki", Role.SN, Role.SWOP)


async def test_tasks_and_taskrunners_as_json(api: tuple[ValidatorNode, str], pki: Path) -> None:
    node, url = api
    op, swop = identity(pki, "op"), identity(pki, "sn")
    chain = node.core.chain_id
    body = {"Command": "train.py", "Entrypoint": "python3", "Envvars": [{"EPOCHS": 2}]}
    async with httpx.AsyncClient(verify=client_context(op), timeout=30) as http:

        async def submit(who: Identity, message: Message) -> dict[str, object]:
            tx = sign_transaction(who, chain, message)
            reply = await http.post(f"{url}/v1/transactions?wait=30", content=tx)
            result: dict[str, object] = reply.json()
            return result

        assert (await submit(op, Join("", op.certificate.public_bytes(Encoding.DER))))["accepted"]
        # the node queued its own join at start, before ours: it is on the ledger by now
        assert str(swop.peer_id) in node.app.state.members
        task = CreateTask("run", "RUN_SWARM", "ops", "ROOTTASK", "run-out", canonical_json(body))
        for who, message in (
            (op, task),
            (op, FinalizeTask("run")),
            (swop, EnrollTaskRunner(DEFAULT_TASKRUNNER)),
            (op, AssignTask("run", DEFAULT_TASKRUNNER)),
            (swop, TaskPeerStatus(DEFAULT_TASKRUNNER, "run", "RUNNING", "", 1)),
            (swop, TaskPeerStatus(DEFAULT_TASKRUNNER, "run", "ERROR", "exit status 2", 1)),
        ):
            reply = await submit(who, message)
            assert reply["accepted"], reply
        listed = (await http.get(f"{url}/v1/tasks")).json()
        assert [(t["name"], t["task_type"], t["finalized"]) for t in listed] == [
            ("run", "RUN_SWARM", True)
        ]
        one = (await http.get(f"{url}/v1/tasks/run")).json()
        assert one["body"] == body
        assert (await http.get(f"{url}/v1/tasks/nope")).json() == {"error": "no task 'nope'"}
        runners = (await http.get(f"{url}/v1/taskrunners")).json()
        assert [(r["name"], r["state"]) for r in runners] == [(DEFAULT_TASKRUNNER, "ERROR")]
        runner = (await http.get(f"{url}/v1/taskrunners/{DEFAULT_TASKRUNNER}")).json()
        assert runner["peer_type"] == "SL"
        assert runner["counts"] == {"IDLE": 0, "RUNNING": 0, "COMPLETE": 0, "ERROR": 1}
        [peer] = runner["peers"]
        assert (peer["node"], peer["state"], peer["reason"]) == (
            str(swop.peer_id),
            "ERROR",
            "exit status 2",
        )
        assert peer["heights"]["finished"] > peer["heights"]["started"]
        missing = await http.get(f"{url}/v1/taskrunners/nope")
        assert missing.status_code == 404
