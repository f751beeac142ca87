"""The node's HTTP API over mutual TLS: reads, signed writes, metrics, the OpenAPI document."""

from __future__ import annotations

import contextlib
import json
import ssl
from pathlib import Path

import httpx
import pytest
import trio
from cryptography.hazmat.primitives.serialization import Encoding
from prometheus_client.parser import text_string_to_metric_families

from swarmlearn.consensus.ledger.app import sign_transaction
from swarmlearn.consensus.ledger.txs import CreateContract, Join
from swarmlearn.p2p.identity import Role
from swarmlearn.p2p.tls import client_context
from swarmlearn.roles.api.server import build_app
from swarmlearn.roles.node.node import ValidatorNode
from tests.api_helpers import api_pki, identity

pytestmark = pytest.mark.process


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    return api_pki(tmp_path / "pki", Role.SN, Role.SL)


def client(pki: Path, name: str = "op") -> httpx.AsyncClient:
    return httpx.AsyncClient(verify=client_context(identity(pki, name)), timeout=30)


async def test_reads_answer_json_for_any_swarm_certificate(
    api: tuple[ValidatorNode, str], pki: Path
) -> None:
    node, url = api
    async with client(pki) as http:
        health = (await http.get(f"{url}/v1/health")).json()
        assert health["status"] == "ok"
        assert health["chain"] == node.core.chain_id
        members = (await http.get(f"{url}/v1/nodes")).json()
        assert [m["roles"] for m in members] == [["sl", "sn"]]
        contracts = (await http.get(f"{url}/v1/contracts")).json()
        assert [c["name"] for c in contracts] == ["defaultbb.cqdb.sml.hpe"]
        missing = await http.get(f"{url}/v1/contracts/nope")
        assert missing.status_code == 404
        assert missing.json() == {"error": "no contract 'nope'"}


async def test_writes_are_signed_transactions_and_refusals_say_why(
    api: tuple[ValidatorNode, str], pki: Path
) -> None:
    node, url = api
    op = identity(pki, "op")
    chain = node.core.chain_id
    async with client(pki) as http:
        early = sign_transaction(op, chain, CreateContract("too-early"))
        refused = await http.post(f"{url}/v1/transactions?wait=10", content=early)
        assert refused.status_code == 422
        assert refused.json()["reason"].endswith("is not a member: join first")
        join = sign_transaction(op, chain, Join("", op.certificate.public_bytes(Encoding.DER)))
        joined = await http.post(f"{url}/v1/transactions?wait=10", content=join)
        assert joined.status_code == 200
        assert joined.json()["accepted"]
        created = await http.post(
            f"{url}/v1/transactions?wait=10",
            content=sign_transaction(op, chain, CreateContract("lab")),
        )
        assert created.json()["height"] > joined.json()["height"]
        assert (await http.get(f"{url}/v1/contracts/lab")).json()["merge_method"] == "mean"
        assert (await http.get(f"{url}/v1/contracts/lab/rounds")).json() == []
        bad_wait = await http.post(f"{url}/v1/transactions?wait=soon", content=join)
        assert bad_wait.status_code == 400
        garbage = await http.post(f"{url}/v1/transactions?wait=5", content=b"\x00garbage")
        assert garbage.status_code == 422
        assert "undecodable" in garbage.json()["reason"]


async def test_metrics_parse_as_prometheus_text(api: tuple[ValidatorNode, str], pki: Path) -> None:
    _, url = api
    async with client(pki) as http:
        text = (await http.get(f"{url}/metrics")).text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    for name in (
        "swarm_consensus_height",
        "swarm_peers",
        "swarm_validators",
        "swarm_bytes_sent",
        "swarm_merge_partials_dropped",
        "swarm_lane_threads",
        "swarm_lane_thread_ends",
    ):
        assert name in families
    assert families["swarm_validators"].samples[0].value == 1
    lane_threads = {s.labels["pool"]: s.value for s in families["swarm_lane_threads"].samples}
    assert lane_threads == {"in": 0, "out": 0}  # no round yet: no lane open either way


async def test_the_openapi_document_describes_every_route(
    api: tuple[ValidatorNode, str], pki: Path
) -> None:
    node, url = api
    async with client(pki) as http:
        document = (await http.get(f"{url}/v1/openapi.json")).json()
    assert document["openapi"].startswith("3.")
    served = {route.path for route in build_app(node).routes}  # type: ignore[attr-defined]
    assert set(document["paths"]) == served


async def test_no_client_certificate_no_api(api: tuple[ValidatorNode, str], pki: Path) -> None:
    _, url = api
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.check_hostname = False
    anonymous.load_verify_locations(pki / "ca.pem")
    async with httpx.AsyncClient(verify=anonymous) as http:
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            await http.get(f"{url}/v1/health")


async def test_curl_with_the_client_certificate(api: tuple[ValidatorNode, str], pki: Path) -> None:
    _, url = api
    done = await trio.run_process(
        [
            "curl",
            "-sS",
            "--fail",
            "--cert",
            str(pki / "op.pem"),
            "--key",
            str(pki / "op-key.pem"),
            "--cacert",
            str(pki / "ca.pem"),
            f"{url}/v1/contracts",
        ],
        capture_stdout=True,
    )
    assert json.loads(done.stdout)[0]["name"] == "defaultbb.cqdb.sml.hpe"


async def test_a_request_that_is_not_http_is_refused_closed_and_counted(
    api: tuple[ValidatorNode, str], pki: Path
) -> None:
    """Garbage after the handshake: Hypercorn answers 400 and closes; the API counts it apart
    from its own (JSON) 400s, under swarm_refused_total{port="api",reason="protocol_errors"}."""
    _, url = api
    host, port = url.removeprefix("https://").rsplit(":", 1)

    def refused() -> float:
        families = {family.name: family for family in text_string_to_metric_families(text)}
        return next(
            sample.value
            for sample in families["swarm_refused"].samples
            if sample.labels == {"port": "api", "reason": "protocol_errors"}
        )

    async with client(pki) as http:
        text = (await http.get(f"{url}/metrics")).text
        before = refused()
        await http.post(f"{url}/v1/transactions", content=b"not cbor")  # answered: not counted
        context = client_context(identity(pki, "op"))
        stream = await trio.open_ssl_over_tcp_stream(host, int(port), ssl_context=context)
        answer = b""
        try:
            await stream.send_all(b"\x00\x01 this is not HTTP \r\n\r\n")
            with trio.fail_after(10), contextlib.suppress(trio.BrokenResourceError):
                while chunk := await stream.receive_some():  # closed (no TLS close_notify)
                    answer += chunk
        finally:
            await trio.aclose_forcefully(stream)
        assert answer.startswith(b"HTTP/1.1 400 ")
        text = (await http.get(f"{url}/metrics")).text
        assert refused() == before + 1
