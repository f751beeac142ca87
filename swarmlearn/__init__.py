"""swarmlearn: open, pure-Python Swarm Learning.

Sites train one model together with no central server; only learned weights
leave a site, and round metadata lives on a small BFT ledger the peers run.
"""

from swarmlearn.errors import (
    ConfigError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    SwarmlearnError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "SwarmlearnError",
    "__version__",
]
