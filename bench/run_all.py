"""Run every bench in bench/ and write a Markdown report (``make bench``, ``make bench QUICK=1``).

Each bench prints one JSON object as its last line: ``{"figures", "targets", "met"}``. The
report (``bench/results/report.md``) records the machine, the versions and every figure; the
exit status is 1 when a bench failed or missed its target.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import ssl
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VERSIONED = ("swarmlearn", "trio", "cryptography", "cbor2", "numpy")
PEERS_VERSIONED = ("flwr", "ray", "hivemind", "torch", "scikit-learn")


def run_bench(path: Path, quick: bool) -> dict[str, Any]:
    command = [sys.executable, str(path), *(["--quick"] if quick else [])]
    print(f"$ {' '.join(command)}", flush=True)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    lines = done.stdout.strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return {"figures": {}, "targets": {}, "met": False, "error": f"exit {done.returncode}"}
    return result


def machine() -> list[str]:
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in VERSIONED)
    return [
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        f"- python {platform.python_version()}, {ssl.OPENSSL_VERSION}",
        f"- {versions}",
        f"- {peers_line()}",
    ]


def peers_line() -> str:
    """The other frameworks' versions (bench/flower.py, bench/hivemind.py), from .venv-peers."""
    sys.path.insert(0, str(HERE / "peers"))
    from peerproc import MISSING, peers_versions

    found = peers_versions(PEERS_VERSIONED)
    if not found:
        return f"compared against (.venv-peers): {MISSING}"
    return "compared against (.venv-peers): " + ", ".join(f"{n} {v}" for n, v in found.items())


def report(results: dict[str, dict[str, Any]], quick: bool) -> str:
    lines = ["# swarmlearn benchmarks" + (" (quick)" if quick else ""), "", *machine(), ""]
    for name, result in results.items():
        status = "met" if result.get("met") else "NOT met"
        lines += [f"## {name}: {status}", "", "| figure | value | target |", "|---|---|---|"]
        targets = result.get("targets", {})
        for key, value in result.get("figures", {}).items():
            lines.append(f"| {key} | {value} | {targets.get(key, '')} |")
        if "error" in result:
            lines.append(f"\nfailed: {result['error']}")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description="Run every bench and write a report.")
    parser.add_argument("--quick", action="store_true", help="small sizes (each under 30 s)")
    parser.add_argument("names", nargs="*", help="only these benches (e.g. round p2p); all if none")
    args = parser.parse_args()
    benches = sorted(p for p in HERE.glob("*.py") if p.name != Path(__file__).name)
    unknown = sorted(set(args.names) - {p.stem for p in benches})
    if unknown:
        known = ", ".join(p.stem for p in benches)
        parser.error(f"no bench {', '.join(unknown)}; there are {known}")
    benches = [p for p in benches if not args.names or p.stem in args.names]
    results = {path.stem: run_bench(path, args.quick) for path in benches}
    out = HERE / "results" / "report.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(report(results, args.quick))
    print(f"\nreport: {out}")
    for name, result in results.items():
        print(f"{name}: {'met' if result.get('met') else 'NOT met'}")
    return 0 if all(result.get("met") for result in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
