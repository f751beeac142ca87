"""The error vocabulary shared by every package.

Two sides, as in h11 and httpcore:

- :class:`LocalProtocolError`: *we* misused a protocol object (sent a message a
  core cannot encode, called an API out of order). A bug on this side.
- :class:`RemoteProtocolError`: a *peer* sent something invalid (a frame over
  the limit, an unknown message type, a field of the wrong type, a bad
  signature). Never crashes a node: the driver drops the input, counts it and
  may disconnect the peer.

And one for people: :class:`ConfigError`, a user's mistake (a bad config value,
a missing certificate file, a wrong API argument). Its message is one line that
names the field or file and says what would be valid; the CLI prints it without
a traceback.
"""

from __future__ import annotations


class SwarmlearnError(Exception):
    """Base class of every error swarmlearn raises on purpose."""


class ProtocolError(SwarmlearnError):
    """A protocol was violated, by this side or the remote one."""


class LocalProtocolError(ProtocolError):
    """This side misused a protocol object (a bug in the caller)."""


class RemoteProtocolError(ProtocolError):
    """A peer sent something invalid; drop it, count it, maybe disconnect."""


class ConfigError(SwarmlearnError):
    """A user's mistake, explained in one line that names the field or file."""


def config_error_in(error: BaseException) -> ConfigError | None:
    """The first :class:`ConfigError` in ``error`` or inside its (trio nursery) exception
    groups: a store that hit a full disk mid-run stops a node with one, and the tasks
    cancelled with it add nothing to say. None if there is none."""
    if isinstance(error, ConfigError):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = config_error_in(inner)
            if found is not None:
                return found
    return None


class ModelMismatchError(ConfigError):
    """The trainer's model differs from the one its training contract holds (the message
    names the tensor)."""
