"""SWCI, the swarm command interface: HPE's command grammar over the node API.

``grammar`` turns a line into a typed command, ``contexts`` remembers which node to talk to,
``client`` talks to it over mutual TLS, ``session`` runs commands and ``main`` is the front end
(REPL, script mode, one-shot commands).
"""

from swarmlearn.swci.contexts import Context, Contexts, load_context, load_contexts, save_contexts

__all__ = ["Context", "Contexts", "load_context", "load_contexts", "save_contexts"]
