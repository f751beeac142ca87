"""Read-only views of the swarm ledger's state as JSON-ready dicts (node API, CLI, dashboard)."""

from __future__ import annotations

from typing import Any

from swarmlearn.consensus.ledger.app import SwarmApp
from swarmlearn.consensus.ledger.rounds import RoundRecord

VIEWS = ("members", "contracts", "perfdata", "refusals")


def members(app: SwarmApp) -> list[dict[str, Any]]:
    return [
        {
            "node": m.node,
            "roles": sorted(role.value for role in m.roles),
            "address": m.address,
            "joined_height": m.joined_height,
            "last_seen_height": m.last_seen_height,
            "last_seen_ms": m.last_seen_ms,
            "alive_height": m.alive_height,
            "alive_ms": m.alive_ms,
        }
        for _, m in sorted(app.state.members.items())
    ]


def round_view(r: RoundRecord) -> dict[str, Any]:
    return {
        "round": r.number,
        "status": r.status.value,
        "merge_method": r.merge_method,
        "checked_in": sorted(r.checkins),
        "min_peers": r.min_peers,
        "participants": list(r.participants),
        "attempt": r.attempt,
        "merged_root": r.merged_root.hex() if r.merged_root else None,
        "excluded": dict(sorted(r.excluded.items())),
        "missing": list(r.missing),
        "dissenters": list(r.dissenters),
        "opened_ms": r.opened_ms,
        "closed_ms": r.closed_ms,
        "finished_ms": r.finished_ms,
        "reason": r.reason,
    }


def contracts(app: SwarmApp) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "merge_method": c.params.merge_method,
            "layout": None
            if c.layout is None
            else [[t.name, t.dtype, list(t.shape)] for t in c.layout],
            "rounds": [round_view(r) for _, r in sorted(c.rounds.items())],
            "done": sorted(c.done),
            "training_over": c.training_over,
        }
        for name, c in sorted(app.state.contracts.items())
    ]


def perfdata(app: SwarmApp, contract: str | None = None) -> list[dict[str, Any]]:
    """HPE's PERFDATA: per node and round, the loss, the metric and the progress."""
    return [
        {
            "contract": name,
            "round": number,
            "node": node,
            "loss": p.loss,
            "metric": p.metric,
            "epochs_done": p.epochs_done,
            "epochs_total": p.epochs_total,
        }
        for (name, number, node), p in sorted(app.state.perf.items())
        if contract is None or name == contract
    ]


def refusals(app: SwarmApp) -> list[dict[str, Any]]:
    return [{"height": h, "sender": s, "reason": r} for h, s, r in app.state.refusals]


def view(app: SwarmApp, what: str) -> Any:
    if what == "members":
        return members(app)
    if what == "contracts":
        return contracts(app)
    if what == "perfdata":
        return perfdata(app)
    if what == "refusals":
        return refusals(app)
    raise ValueError(f"unknown view {what!r}; valid: {', '.join(VIEWS)}")
