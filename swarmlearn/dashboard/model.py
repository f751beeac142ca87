"""What the dashboard's pages show, computed from the node API's JSON (no HTML here).

Pure functions over the shapes of ``swarmlearn.roles.api.views``: node rows with liveness, round
rows with durations and the model's size, per-node PERFDATA series, and a contract chosen by
name with an error that lists the valid names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: A member the API node is not connected to, seen on the ledger within this, is "recent".
RECENT_MS = 120_000


@dataclass(frozen=True)
class NodeRow:
    node: str
    roles: list[str]
    address: str
    liveness: str  # "this node", "connected", "recent" or "quiet"
    last_seen_ms: int
    last_seen_height: int
    joined_height: int
    validator: bool
    version: str


def node_rows(status: dict[str, Any], members: list[dict[str, Any]], now_ms: int) -> list[NodeRow]:
    """One row per member; liveness from the API node's connections, then the ledger."""
    peers = set(status.get("peers", []))
    validators = set(status.get("validators", []))
    rows = []
    for m in members:
        node = m["node"]
        seen_ms = int(m.get("alive_ms", m.get("last_seen_ms", 0)))  # votes and transactions
        if node == status.get("node"):
            liveness = "this node"
        elif node in peers:
            liveness = "connected"
        elif now_ms - seen_ms <= RECENT_MS:
            liveness = "recent"
        else:
            liveness = "quiet"
        rows.append(
            NodeRow(
                node=node,
                roles=list(m.get("roles", [])),
                address=str(m.get("address", "")),
                liveness=liveness,
                last_seen_ms=seen_ms,
                last_seen_height=int(m.get("alive_height", m.get("last_seen_height", 0))),
                joined_height=int(m.get("joined_height", 0)),
                validator=node in validators,
                version=str(m.get("version", "")),
            )
        )
    return rows


def model_bytes(layout: list[Any] | None) -> int:
    """Bytes of one contribution: the sum over the contract's tensors of size x itemsize."""
    total = 0
    for _name, dtype, shape in layout or []:
        try:
            itemsize = np.dtype(dtype).itemsize
        except TypeError:
            itemsize = 2 if dtype == "bfloat16" else 4
        total += itemsize * int(np.prod(shape, dtype=np.int64))
    return total


@dataclass(frozen=True)
class RoundRow:
    round: int
    status: str
    attempt: int
    participants: list[str]
    checked_in: int
    min_peers: int
    duration_s: float | None
    merge_method: str
    merged_root: str
    excluded: dict[str, str]
    missing: list[str]
    dissenters: list[str]
    reason: str
    opened_ms: int


def round_rows(contract: dict[str, Any]) -> list[RoundRow]:
    """The contract's rounds, newest first."""
    rows = []
    for r in contract.get("rounds", []):
        end = r.get("finished_ms") or r.get("closed_ms")
        duration = None if end is None else (end - r["opened_ms"]) / 1000
        rows.append(
            RoundRow(
                round=r["round"],
                status=r["status"],
                attempt=r.get("attempt", 1),
                participants=list(r.get("participants", [])),
                checked_in=len(r.get("checked_in", [])),
                min_peers=r.get("min_peers", 0),
                duration_s=duration,
                merge_method=r.get("merge_method") or contract.get("merge_method", ""),
                merged_root=r.get("merged_root") or "",
                excluded=dict(r.get("excluded", {})),
                missing=list(r.get("missing", [])),
                dissenters=list(r.get("dissenters", [])),
                reason=r.get("reason") or "",
                opened_ms=r.get("opened_ms", 0),
            )
        )
    return sorted(rows, key=lambda row: row.round, reverse=True)


@dataclass(frozen=True)
class ContractSummary:
    name: str
    merge_method: str
    rounds: int
    done: int
    failed: int
    last_round: int
    last_status: str
    last_root: str
    model_bytes: int
    finished_nodes: int
    training_over: bool


def contract_summary(contract: dict[str, Any]) -> ContractSummary:
    rounds = contract.get("rounds", [])
    last = max(rounds, key=lambda r: r["round"]) if rounds else None
    return ContractSummary(
        name=contract["name"],
        merge_method=contract.get("merge_method", ""),
        rounds=len(rounds),
        done=sum(1 for r in rounds if r["status"] == "done"),
        failed=sum(1 for r in rounds if r["status"] == "failed"),
        last_round=last["round"] if last else 0,
        last_status=last["status"] if last else "",
        last_root=(last.get("merged_root") or "") if last else "",
        model_bytes=model_bytes(contract.get("layout")),
        finished_nodes=len(contract.get("done", [])),
        training_over=bool(contract.get("training_over")),
    )


class Missing(LookupError):
    """What a page shows is not on the ledger (yet); the message says what is."""


def choose_contract(contracts: list[dict[str, Any]], name: str | None) -> dict[str, Any]:
    """The contract called ``name``; without a name, the one with the latest activity.

    Raises :class:`Missing` with a sentence naming the valid contracts."""
    if not contracts:
        raise Missing(
            "no training contract on the ledger yet: one appears when an operator creates it "
            "or the first SL node checks in"
        )
    if name is None:
        return max(contracts, key=lambda c: max((r["opened_ms"] for r in c["rounds"]), default=0))
    for contract in contracts:
        if contract["name"] == name:
            return contract
    names = ", ".join(c["name"] for c in contracts)
    raise Missing(f"no contract {name!r} on this swarm; contracts: {names}")


@dataclass(frozen=True)
class Series:
    node: str
    points: list[tuple[float, float]]  # (round, value)


def perf_series(perfdata: list[dict[str, Any]], contract: str, field: str) -> list[Series]:
    """One series per node of ``field`` ("loss" or "metric") over rounds, nodes sorted."""
    by_node: dict[str, list[tuple[float, float]]] = {}
    for p in perfdata:
        if p["contract"] == contract and p.get(field) is not None:
            by_node.setdefault(p["node"], []).append((float(p["round"]), float(p[field])))
    return [Series(node, sorted(points)) for node, points in sorted(by_node.items())]


def short(node: str) -> str:
    """A node id as people read it: its first 10 characters."""
    return node[:10]
