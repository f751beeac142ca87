"""SWCI commands on the ledger's registry and training contracts: LIST NODES, the contract
commands, PERFDATA and our LIST ROUNDS. Reads are GETs of the node API; writes are signed
transactions (:meth:`ApiClient.submit`)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from swarmlearn.consensus.ledger import txs as swarm_txs
from swarmlearn.errors import ConfigError
from swarmlearn.merge.methods import round_method_problem
from swarmlearn.swci import commands as c
from swarmlearn.swci import render
from swarmlearn.swci.client import CommandFailed
from swarmlearn.swci.runtime import Result, Session, handles


def _contract(session: Session, name: str) -> dict[str, Any]:
    found: dict[str, Any] = session.client().get(f"contracts/{quote(name, safe='')}")
    return found


@handles(c.ListNodes)
def list_nodes(session: Session, command: c.ListNodes) -> Result:
    """HPE's LIST NODES: SN, SL and SWOP nodes; operators (swci only) are not shown. Last
    seen is the node's liveness: its latest vote in a block's commit (validators vote on
    every block) or transaction, not its latest training activity."""
    members = [m for m in session.client().get("nodes") if set(m["roles"]) - {"swci"}]
    rows = [
        (m["node"][: render.SHORT_ID], ",".join(m["roles"]), m["address"] or "-",
         m["joined_height"], m["alive_height"], render.when(m["alive_ms"]))
        for m in members
    ]  # fmt: skip
    headers = ("NODE", "ROLES", "ADDRESS", "JOINED", "SEEN AT", "LAST SEEN (UTC)")
    return Result(members, render.table(headers, rows, "(no nodes)"))


@handles(c.CreateContract)
def create_contract(session: Session, command: c.CreateContract) -> Result:
    problem = round_method_problem(command.merge_method)
    if problem is not None:
        raise ConfigError(f"CREATE CONTRACT {command.name}: {problem}")
    existing = _existing(session, command)
    if existing is not None:
        return existing
    body = swarm_txs.CreateContract(command.name, merge_method=command.merge_method)
    try:
        height = session.client().submit(body)
    except CommandFailed:
        existing = _existing(session, command)  # created meanwhile (another operator)?
        if existing is not None:
            return existing
        raise
    doc = {"contract": command.name, "merge_method": command.merge_method, "height": height}
    return Result(doc, f"contract {command.name} created at height {height}")


def _existing(session: Session, command: c.CreateContract) -> Result | None:
    """An init script can be run again: the contract it creates exists already with the same
    settings (said so, nothing done), or with others (refused, naming the difference)."""
    found = [x for x in session.client().get("contracts") if x["name"] == command.name]
    if not found:
        return None
    method = found[0]["merge_method"]
    if method != command.merge_method:
        raise CommandFailed(
            f"CREATE CONTRACT {command.name}: the contract exists with merge method {method!r},"
            f" not {command.merge_method!r} (use another contract name for another method)"
        )
    doc = {"contract": command.name, "merge_method": method, "height": None, "existed": True}
    return Result(doc, f"contract {command.name} exists already with the same settings")


def _latest(contract: dict[str, Any]) -> dict[str, Any] | None:
    rounds: list[dict[str, Any]] = contract["rounds"]
    return rounds[-1] if rounds else None


@handles(c.ListContracts)
def list_contracts(session: Session, command: c.ListContracts) -> Result:
    contracts = session.client().get("contracts")
    docs = [_status(x) for x in contracts]
    rows = [
        (d["name"], d["merge_method"], d["rounds"], d["latest_round"], d["latest_status"],
         d["training_over"])
        for d in docs
    ]  # fmt: skip
    headers = ("NAME", "MERGE", "ROUNDS", "LATEST", "STATUS", "OVER")
    return Result(docs, render.table(headers, rows, "(no contracts)"))


@handles(c.GetContractInfo)
def get_contract_info(session: Session, command: c.GetContractInfo) -> Result:
    contract = _contract(session, command.name)
    layout = contract["layout"] or []
    parameters = 0
    for _, _, shape in layout:
        size = 1
        for extent in shape:
            size *= extent
        parameters += size
    doc = {
        "name": contract["name"],
        "merge_method": contract["merge_method"],
        "tensors": len(layout),
        "parameters": parameters,
        "layout": layout,
    }
    shown = [(k, v) for k, v in doc.items() if k != "layout"]
    shown.append(("layout", "not fixed yet (no round)" if not layout else f"{len(layout)} tensors"))
    return Result(doc, render.fields(shown))


def _status(contract: dict[str, Any]) -> dict[str, Any]:
    latest = _latest(contract)
    finished = [r for r in contract["rounds"] if r["merged_root"]]
    return {
        "name": contract["name"],
        "merge_method": contract["merge_method"],
        "rounds": len(contract["rounds"]),
        "rounds_merged": len(finished),
        "latest_round": None if latest is None else latest["round"],
        "latest_status": None if latest is None else latest["status"],
        "latest_participants": [] if latest is None else latest["participants"],
        "done": contract["done"],
        "training_over": contract["training_over"],
    }


@handles(c.GetContractStatus)
def get_contract_status(session: Session, command: c.GetContractStatus) -> Result:
    doc = _status(_contract(session, command.name))
    shown = [(k, v) for k, v in doc.items() if k not in ("latest_participants", "done")]
    shown.append(("participants", [render.short(p) for p in doc["latest_participants"]]))
    shown.append(("final", [render.short(p) for p in doc["done"]]))
    return Result(doc, render.fields(shown))


@handles(c.Perfdata)
def perfdata(session: Session, command: c.Perfdata) -> Result:
    """HPE's PERFDATA: per node, its latest report (round, loss, metric, epochs)."""
    contract = _contract(session, command.name)
    rows = session.client().get("perfdata", contract=command.name)
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:  # sorted by (contract, round, node): later rounds overwrite
        latest[row["node"]] = row
    over = set(contract["done"])
    docs = [
        {**row, "status": "final" if node in over else "active"}
        for node, row in sorted(latest.items())
    ]
    table_rows = [
        (render.short(d["node"]), d["status"], d["round"], d["loss"], d["metric"],
         d["epochs_done"], d["epochs_total"])
        for d in docs
    ]  # fmt: skip
    headers = ("NODE", "STATUS", "ROUND", "LOSS", "METRIC", "EPOCHS DONE", "EPOCHS TOTAL")
    return Result(docs, render.table(headers, table_rows, "(no performance data yet)"))


@handles(c.ResetContract)
def reset_contract(session: Session, command: c.ResetContract) -> Result:
    height = session.client().submit(swarm_txs.ResetContract(command.name))
    return Result(
        {"contract": command.name, "height": height},
        f"contract {command.name} reset at height {height}",
    )


def _round_doc(contract: str, r: dict[str, Any]) -> dict[str, Any]:
    return {
        "contract": contract,
        "round": r["round"],
        "status": r["status"],
        "participants": r["participants"],
        "merged_root": r["merged_root"],
        "attempt": r["attempt"],
        "duration_s": render.duration_s(r["opened_ms"], r["finished_ms"]),
        "reason": r["reason"],
    }


@handles(c.ListRounds)
def list_rounds(session: Session, command: c.ListRounds) -> Result:
    """Our own: every round with its participants, merged hash and duration."""
    client = session.client()
    if command.contract is None:
        contracts = [(x["name"], x["rounds"]) for x in client.get("contracts")]
    else:
        rounds = client.get(f"contracts/{quote(command.contract, safe='')}/rounds")
        contracts = [(command.contract, rounds)]
    docs = [_round_doc(name, r) for name, rounds in contracts for r in rounds]
    rows = [
        (d["contract"], d["round"], d["status"], len(d["participants"]),
         " ".join(render.short(p)[:8] for p in d["participants"]),
         (d["merged_root"] or "-")[:16], d["duration_s"])
        for d in docs
    ]  # fmt: skip
    headers = ("CONTRACT", "ROUND", "STATUS", "N", "PARTICIPANTS", "MERGED", "DURATION S")
    return Result(docs, render.table(headers, rows, "(no rounds yet)"))
