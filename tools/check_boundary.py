"""The sans-IO boundary, held: each core module imports no I/O.

Each module in ``CORES`` is imported in a fresh interpreter; the check fails if that loaded
trio, socket, ssl, mmap, selectors or subprocess, or threading other than through ``logging``
(which every module may use). A failure names the module, what it loaded and the chain of
imports that got there, so the fix (a lazy import, a module moved to the driver's side) is
plain. Run by ``make lint``; ``python tools/check_boundary.py MODULE ...`` checks others.
"""

from __future__ import annotations

import json
import subprocess
import sys

# The protocol cores of DESIGN.md: consensus engine, ledger application, merge, the SL round
# core, gossip, peer table, transfer, and the simulator that drives them.
CORES = (
    "swarmlearn.sansio",
    "swarmlearn.consensus.tendermint.machine",
    "swarmlearn.consensus.tendermint.votekeeper",
    "swarmlearn.consensus.tendermint.core",
    "swarmlearn.consensus.tendermint.over_gossip",
    "swarmlearn.consensus.ledger.app",
    "swarmlearn.merge",
    "swarmlearn.merge.sharded",
    "swarmlearn.merge.stream",
    "swarmlearn.roles.sl.core",
    "swarmlearn.p2p.gossip",
    "swarmlearn.p2p.peertable",
    "swarmlearn.p2p.transfer",
    "swarmlearn.sim",
)
FORBIDDEN = ("trio", "socket", "ssl", "mmap", "selectors", "subprocess", "threading")

# Run in the child: record who imported each forbidden module, then import the core.
PROBE = r"""
import builtins, json, sys
FORBIDDEN = set(json.loads(sys.argv[1]))
chains = {}
stack = []
real_import = builtins.__import__

def tracing_import(name, globals=None, locals=None, fromlist=(), level=0):
    importer = (globals or {}).get("__name__", "?")
    top = name.split(".")[0] if level == 0 else None
    first = top is not None and top not in sys.modules
    stack.append(importer)
    try:
        module = real_import(name, globals, locals, fromlist, level)
    finally:
        stack.pop()
    if first and top in FORBIDDEN and top not in chains:
        chains[top] = stack + [importer]
    return module

builtins.__import__ = tracing_import
__import__(sys.argv[2])
loaded = {m: chains.get(m, ["?"]) for m in FORBIDDEN if m in sys.modules}
print(json.dumps(loaded))
"""


#: The standard library's own imports that do no I/O at import time: logging's lock needs
#: threading, and cryptography.x509 reaches email.utils, which imports socket (and so
#: selectors) for getfqdn. A forbidden module loaded only through one of these is allowed.
ALLOWED_VIA = {
    "threading": ("logging",),
    "socket": ("email.utils",),
    "selectors": ("email.utils",),
}


#: The cores that judge X.509 certificates (the ledger app checks a Join's certificate, and the
#: SL core reads the ledger through it): only these may take the email.utils door.
X509_CORES = ("swarmlearn.consensus.ledger.app", "swarmlearn.roles.sl.core")


def allowed(core: str, module: str, chain: list[str]) -> bool:
    """Whether ``module``, imported along ``chain``, came in only through an allowed door."""
    if module in ("socket", "selectors") and core not in X509_CORES:
        return False
    doors = ALLOWED_VIA.get(module, ())
    return any(link == door or link.startswith(door + ".") for link in chain for door in doors)


def check(core: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(FORBIDDEN), core],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        return [f"{core}: does not import: {out.stderr.strip().splitlines()[-1]}"]
    loaded: dict[str, list[str]] = json.loads(out.stdout)
    return [
        f"{core}: loads {module} via {' -> '.join(dict.fromkeys(chain[1:]))}"
        for module, chain in sorted(loaded.items())
        if not allowed(core, module, chain)
    ]


def main(argv: list[str]) -> int:
    problems = [line for core in (argv or CORES) for line in check(core)]
    for line in problems:
        print(line)
    if not problems:
        print(f"sans-IO boundary holds: {len(argv or CORES)} core modules import no I/O")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
