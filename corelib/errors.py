"""One error hierarchy for the whole of stowkit.

Every front end (CLI, Docker plugin, NBD server, REST API) maps these to its
own vocabulary: an exit code and a one-line message, an HTTP status, an NBD
errno.  Anything that is *not* a :class:`StowkitError` is a bug and may show a
traceback; a ``StowkitError`` never does.
"""

from __future__ import annotations


class StowkitError(Exception):
    """Base class.  ``str(err)`` is the one-line message shown to users."""

    exit_code: int = 1
    http_status: int = 500

    def __init__(self, message: str) -> None:
        # Keep messages on one line whatever a backend put in them.
        super().__init__(" ".join(str(message).split()))

    @property
    def message(self) -> str:
        return self.args[0]


class InvalidArgument(StowkitError):
    """The caller asked for something that makes no sense (a user mistake)."""

    exit_code = 3
    http_status = 400


class InvalidName(InvalidArgument):
    """A volume, snapshot, device or region name breaks :mod:`stowkit.corelib.names`."""

    exit_code = 4


class NotFound(StowkitError):
    exit_code = 5
    http_status = 404


class Forbidden(StowkitError):
    """The caller's roles do not allow this (HTTP 403)."""

    exit_code = 11
    http_status = 403


class AlreadyExists(StowkitError):
    exit_code = 6
    http_status = 409


class Conflict(StowkitError):
    """The request clashes with the current state (in use, mounted, busy)."""

    exit_code = 7
    http_status = 409


class PreconditionFailed(Conflict):
    """A condition of the request (an ``If-Match`` version) no longer holds (HTTP 412)."""

    exit_code = 12
    http_status = 412


class Locked(Conflict):
    """Somebody else holds the lock on this object."""

    exit_code = 8
    http_status = 423


class BackendUnavailable(StowkitError):
    """A backend or remote service cannot be reached or refused to work."""

    exit_code = 9
    http_status = 503


class ConfigError(StowkitError):
    """Configuration is missing, unreadable or names an unknown backend."""

    exit_code = 10
    http_status = 500


# Exit code 2 is argparse's usage error; the table below is what doc/ shows.
EXIT_CODES: dict[str, int] = {
    cls.__name__: cls.exit_code
    for cls in (
        StowkitError,
        InvalidArgument,
        InvalidName,
        NotFound,
        AlreadyExists,
        Conflict,
        Locked,
        BackendUnavailable,
        ConfigError,
        Forbidden,
        PreconditionFailed,
    )
}
