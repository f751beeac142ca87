"""The dashboard's HTML: a page is a few named sections, each a string of escaped HTML.

:func:`sections` renders one page's sections from a :class:`Snapshot`; :func:`page` wraps
them in the document (navigation, CSS and the small live-update script). The live-update
stream sends the same sections again whenever one changes, so the first render and every
update come from one code path. Every value from the API goes through ``html.escape``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from html import escape
from importlib import resources
from typing import Any
from urllib.parse import urlencode

from swarmlearn import __version__
from swarmlearn.dashboard import model
from swarmlearn.dashboard.charts import line_chart
from swarmlearn.dashboard.upstream import Snapshot, traffic

ROUNDS_SHOWN = 100
OVERVIEW_ROUNDS = 5
PAGES = {  # name: (title, the API sources it reads)
    "overview": ("Overview", ("status", "nodes", "contracts", "metrics")),
    "contracts": ("Contracts", ("contracts",)),
    "rounds": ("Rounds", ("contracts", "status")),
    "perf": ("Loss and metric", ("contracts", "perfdata")),
    "tasks": ("Tasks", ("tasks", "taskrunners")),
}
PATHS = {"overview": "/", "contracts": "/contracts", "rounds": "/rounds", "perf": "/perf"}
PATHS["tasks"] = "/tasks"
Query = dict[str, str]


def human_bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(count) < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def clock(ms: int) -> str:
    """A ledger time as this machine's local time; the date too when it is not today."""
    if ms <= 0:
        return "never"
    moment = time.localtime(ms / 1000)
    if time.strftime("%Y-%m-%d", moment) == time.strftime("%Y-%m-%d"):
        return time.strftime("%H:%M:%S", moment)
    return time.strftime("%Y-%m-%d %H:%M", moment)


def _node(node: str) -> str:
    return f'<code title="{escape(node)}">{escape(model.short(node))}</code>'


def _nodes(nodes: list[str]) -> str:
    return " ".join(_node(n) for n in nodes) or "&ndash;"


def _badge(text: str) -> str:
    return f'<span class="badge {escape(text.replace(" ", "-"))}">{escape(text)}</span>'


def _table(head: list[str], rows: list[str], empty: str, cls: str = "") -> str:
    if not rows:
        return f'<p class="empty">{escape(empty)}</p>'
    header = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join(rows)
    return f'<table class="{cls}"><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>'


def _cards(pairs: list[tuple[str, str]]) -> str:
    cards = "".join(
        f'<div class="card"><div class="label">{escape(k)}</div><div class="value">{v}</div></div>'
        for k, v in pairs
    )
    return f'<div class="cards">{cards}</div>'


def overview(snap: Snapshot, query: Query) -> str:
    status, members = snap.data["status"], snap.data["nodes"]
    rows = model.node_rows(status, members, snap.fetched_ms)
    sent = traffic(snap.data.get("metrics") or "")
    summary = _cards(
        [
            ("chain", f"<code>{escape(status['chain'])}</code>"),
            ("ledger height", f'<span id="height">{status["height"]}</span>'),
            ("transactions", str(status["transactions"])),
            ("validators", str(len(status["validators"]))),
            ("members", str(len(members))),
            ("API node", _node(status["node"])),
            (
                "its traffic",
                f"{human_bytes(sent.get('swarm_bytes_sent', 0))} out, "
                f"{human_bytes(sent.get('swarm_bytes_received', 0))} in",
            ),
        ]
    )
    versions = any(r.version for r in rows)
    head = ["node", "roles", "address", "liveness", "last seen", "validator", "joined"]
    head += ["version"] if versions else []
    body = []
    for r in rows:
        cells = [
            _node(r.node),
            escape(", ".join(r.roles)),
            escape(r.address) or "&ndash;",
            _badge(r.liveness),
            f"{clock(r.last_seen_ms)} (height {r.last_seen_height})",
            "yes" if r.validator else "no",
            f"height {r.joined_height}",
        ]
        cells += [escape(r.version or "?")] if versions else []
        body.append(
            f'<tr data-node="{escape(r.node)}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
        )
    nodes = _table(head, body, "no members yet", "nodes")
    contracts = snap.data["contracts"]
    latest = ""
    if contracts:
        contract = model.choose_contract(contracts, None)
        recent = model.round_rows(contract)[:OVERVIEW_ROUNDS]
        latest = f"<h2>Latest rounds of {escape(contract['name'])}</h2>"
        latest += rounds_table(contract, recent)
    return f"{summary}<h2>Nodes</h2>{nodes}<h2>Contracts</h2>{contracts_table(contracts)}{latest}"


def contracts_table(contracts: list[dict[str, Any]]) -> str:
    rows = []
    for c in map(model.contract_summary, contracts):
        link = f"/rounds?{urlencode({'contract': c.name})}"
        perf = f"/perf?{urlencode({'contract': c.name})}"
        last = f"{c.last_round} {_badge(c.last_status)}" if c.last_round else "&ndash;"
        cells = [
            f'<a href="{escape(link)}">{escape(c.name)}</a>',
            escape(c.merge_method),
            f"{c.done} done, {c.failed} failed, {c.rounds} in all",
            last,
            f"<code>{escape(c.last_root[:16])}</code>" if c.last_root else "&ndash;",
            human_bytes(c.model_bytes) if c.model_bytes else "&ndash;",
            "over" if c.training_over else f"{c.finished_nodes} nodes finished",
            f'<a href="{escape(perf)}">curves</a>',
        ]
        rows.append(
            f'<tr data-contract="{escape(c.name)}" data-last-round="{c.last_round}" '
            f'data-done="{c.done}">' + "".join(f"<td>{x}</td>" for x in cells) + "</tr>"
        )
    head = ["contract", "merge", "rounds", "latest round", "merged hash", "model size"]
    head += ["training", "PERFDATA"]
    return _table(head, rows, "no training contract on the ledger yet", "contracts")


def contracts_page(snap: Snapshot, query: Query) -> str:
    parts = [contracts_table(snap.data["contracts"])]
    for c in snap.data["contracts"]:
        layout = c.get("layout")
        if layout:
            rows = [
                f"<tr><td><code>{escape(n)}</code></td><td>{escape(d)}</td>"
                f"<td>{escape(' x '.join(map(str, s)) or 'scalar')}</td></tr>"
                for n, d, s in layout
            ]
            table = _table(["tensor", "dtype", "shape"], rows, "")
            parts.append(
                f"<details><summary>model of {escape(c['name'])}</summary>{table}</details>"
            )
    return "".join(parts)


def _picker(contracts: list[dict[str, Any]], chosen: str, path: str) -> str:
    links = [
        f'<a href="{path}?{escape(urlencode({"contract": c["name"]}))}"'
        f"{' class=current' if c['name'] == chosen else ''}>{escape(c['name'])}</a>"
        for c in contracts
    ]
    return f'<nav class="picker">contract: {" ".join(links)}</nav>'


def rounds_table(contract: dict[str, Any], rows: list[model.RoundRow]) -> str:
    """The timeline: a row per round, newest first, a bar as long as its duration."""
    size = model.model_bytes(contract.get("layout"))
    longest = max((r.duration_s or 0 for r in rows), default=0) or 1
    body = []
    for r in rows:
        bar = ""
        if r.duration_s is not None:
            width = max(2, 100 * r.duration_s / longest)
            bar = f'<div class="bar" style="width:{width:.0f}%"></div>'
        excluded = "; ".join(f"{model.short(n)}: {why}" for n, why in r.excluded.items())
        cells = [
            str(r.round),
            _badge(r.status) + (f" attempt {r.attempt}" if r.attempt > 1 else ""),
            f"{_nodes(r.participants)} ({r.checked_in} in, min {r.min_peers})",
            ("&ndash;" if r.duration_s is None else f"{r.duration_s:.2f} s") + bar,
            human_bytes(size * len(r.participants)) if size else "&ndash;",
            escape(r.merge_method),
            f"<code>{escape(r.merged_root[:16])}</code>" if r.merged_root else "&ndash;",
            escape(excluded) or "&ndash;",
            escape("; ".join(filter(None, [r.reason, *_others(r)]))) or "&ndash;",
        ]
        body.append(
            f'<tr data-round="{r.round}" data-status="{escape(r.status)}">'
            + "".join(f"<td>{c}</td>" for c in cells)
            + "</tr>"
        )
    head = ["round", "status", "participants", "duration", "contributions", "merge"]
    head += ["merged hash", "excluded (why)", "notes"]
    empty = (
        f"no rounds yet in {contract['name']}: a round starts when its minimum number of SL "
        "nodes check in"
    )
    return _table(head, body, empty, "rounds")


def rounds_page(snap: Snapshot, query: Query) -> str:
    contracts = snap.data["contracts"]
    contract = model.choose_contract(contracts, query.get("contract"))
    rows = model.round_rows(contract)
    shown = rows if query.get("all") else rows[:ROUNDS_SHOWN]
    more = ""
    if len(rows) > len(shown):
        link = f"/rounds?{urlencode({'contract': contract['name'], 'all': '1'})}"
        more = f'<p><a href="{escape(link)}">all {len(rows)} rounds</a></p>'
    picker = _picker(contracts, contract["name"], "/rounds")
    return picker + rounds_table(contract, shown) + more


def _others(r: model.RoundRow) -> list[str]:
    notes = []
    if r.missing:
        notes.append("missing " + ", ".join(map(model.short, r.missing)))
    if r.dissenters:
        notes.append("dissent " + ", ".join(map(model.short, r.dissenters)))
    return notes


def perf_page(snap: Snapshot, query: Query) -> str:
    contracts = snap.data["contracts"]
    contract = model.choose_contract(contracts, query.get("contract"))
    name = contract["name"]
    perf = snap.data["perfdata"]
    loss = model.perf_series(perf, name, "loss")
    metric = model.perf_series(perf, name, "metric")
    if not loss and not metric:
        charts = (
            f'<p class="empty">no PERFDATA for {escape(name)} yet: a node reports its loss and '
            "metric when its SwarmCallback has adsValData and a lossFunction</p>"
        )
    else:
        charts = (
            f"<h2>Validation loss</h2>{line_chart(f'{name}: loss', loss, 'loss')}"
            f"<h2>Metric</h2>{line_chart(f'{name}: metric', metric, 'metric')}"
        )
    return _picker(contracts, name, "/perf") + charts


def _heights(item: dict[str, Any], *names: str) -> str:
    found = [f"{n} {item[f'{n}_height']}" for n in names if item.get(f"{n}_height") is not None]
    return escape(", ".join(found)) or "&ndash;"


def tasks_table(tasks: list[dict[str, Any]]) -> str:
    rows = []
    for t in tasks:
        cells = [
            f"<code>{escape(str(t.get('name')))}</code>",
            escape(str(t.get("task_type", ""))),
            escape(str(t.get("author", ""))),
            escape(str(t.get("prereq", ""))),
            escape(str(t.get("outcome", ""))),
            _badge("finalized" if t.get("finalized") else "draft"),
            _heights(t, "created", "finalized", "completed"),
        ]
        rows.append(
            f'<tr data-task="{escape(str(t.get("name")))}">'
            + "".join(f"<td>{c}</td>" for c in cells)
            + "</tr>"
        )
    head = ["task", "type", "author", "prereq", "outcome", "state", "heights"]
    return _table(head, rows, "no tasks", "tasks")


def _peers(runner: dict[str, Any]) -> str:
    peers = runner.get("peers")
    if not isinstance(peers, list):
        counts = runner.get("counts") or {}
        return escape(", ".join(f"{k} {v}" for k, v in counts.items() if v)) or "&ndash;"
    return (
        "<br>".join(
            f"{_node(str(p.get('node', '')))} {_badge(str(p.get('state', '')))}"
            + (f" {escape(str(p['reason']))}" if p.get("reason") else "")
            for p in peers
        )
        or "&ndash;"
    )


def runners_table(runners: list[dict[str, Any]]) -> str:
    rows = []
    for r in runners:
        listeners = r.get("listeners")
        cells = [
            f"<code>{escape(str(r.get('name')))}</code>",
            escape(str(r.get("task") or "")) or "&ndash;",
            _badge(str(r.get("state", ""))),
            str(r.get("assignment", "")),
            escape(f"{r.get('quorum', '')} ({r.get('mode', '')})"),
            str(len(listeners) if isinstance(listeners, list) else listeners),
            _peers(r),
            _heights(r, "assigned", "finished"),
        ]
        rows.append(
            f'<tr data-runner="{escape(str(r.get("name")))}" data-state='
            f'"{escape(str(r.get("state", "")))}">'
            + "".join(f"<td>{c}</td>" for c in cells)
            + "</tr>"
        )
    head = ["taskrunner", "task", "state", "assignment", "quorum", "listeners", "peers"]
    return _table([*head, "heights"], rows, "no taskrunners", "runners")


def tasks_page(snap: Snapshot, query: Query) -> str:
    tasks, runners = snap.data.get("tasks"), snap.data.get("taskrunners")
    if tasks is None and runners is None:
        return '<p class="empty">no tasks: this node\'s API has no SWOP task list</p>'
    return (
        f"<h2>Tasks</h2>{tasks_table(tasks or [])}"
        f"<h2>Task runners</h2>{runners_table(runners or [])}"
    )


RENDERERS: dict[str, Callable[[Snapshot, Query], str]] = {
    "overview": overview,
    "contracts": contracts_page,
    "rounds": rounds_page,
    "perf": perf_page,
    "tasks": tasks_page,
}


def sections(page_name: str, snap: Snapshot | None, error: str, query: Query) -> dict[str, str]:
    """The page's sections: ``banner`` (an error, or empty), ``stamp`` and ``main``."""
    stamp = time.strftime("%H:%M:%S")
    if snap is None:
        return {
            "banner": f'<p class="error">{escape(error)}</p>',
            "stamp": f"tried at {stamp}",
            "main": "",
        }
    try:
        main = RENDERERS[page_name](snap, query)
        banner = ""
    except model.Missing as missing:  # a contract that is not (yet) there: offer the others
        contracts = snap.data.get("contracts") or []
        main = _picker(contracts, "", PATHS[page_name]) if contracts else ""
        banner = f'<p class="warn">{escape(str(missing.args[0]))}</p>'
    except (KeyError, TypeError, ValueError, AttributeError) as error:  # an unexpected answer
        main = ""
        banner = (
            f'<p class="error">cannot show this page from what {escape(snap.api)} answered '
            f"({type(error).__name__}: {escape(str(error))}): is the node a different "
            f"swarmlearn version than this dashboard ({__version__})?</p>"
        )
    took = f"{snap.fetch_s * 1000:.0f} ms"
    return {
        "banner": banner,
        "stamp": f"{escape(snap.api)}, updated {stamp} ({took})",
        "main": main,
    }


@functools.cache
def static_text(name: str) -> str:
    """A file of ``static/`` (package data), read once."""
    return resources.files("swarmlearn.dashboard").joinpath("static", name).read_text()


def stylesheet() -> str:
    """The CSS, inlined in every page: no request stands between the HTML and its first paint."""
    return static_text("dashboard.css")


def page(page_name: str, parts: dict[str, str], query: Query) -> str:
    """The whole document around ``parts``."""
    title = PAGES[page_name][0]
    suffix = f"?{urlencode({'contract': query['contract']})}" if "contract" in query else ""
    nav = "".join(
        f'<a href="{PATHS[name]}{suffix if name in ("rounds", "perf") else ""}"'
        f"{' class=current' if name == page_name else ''}>{escape(t)}</a>"
        for name, (t, _) in PAGES.items()
    )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{escape(title)} - swarmlearn dashboard</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{stylesheet()}</style>"
        f'<script src="/static/dashboard.js" defer></script></head>'
        f'<body data-page="{page_name}"><header><strong>swarmlearn</strong>'
        f"<nav>{nav}</nav><span id=conn></span><span id=stamp>{parts['stamp']}</span></header>"
        f"<div id=banner>{parts['banner']}</div><main id=main>{parts['main']}</main>"
        f"<footer>swarmlearn {__version__} dashboard</footer></body></html>"
    )
