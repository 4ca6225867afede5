"""Status lines, the error an app raises, and errors as JSON answers.

An app raises :class:`HTTPError` for what HTTP itself refuses (a method the
route lacks, a malformed header) and lets :class:`~stowkit.corelib.errors.StowkitError`
through for everything else: each class of that hierarchy carries its HTTP
status.  :class:`JsonErrors` turns either into the API's own error body;
anything else is a bug, logged and answered 500 without internals.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Callable, Collection, Iterable
from typing import Any

from stowkit.corelib.errors import StowkitError

#: The reason phrase of every status a stowkit API answers.
REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    300: "Multiple Choices",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    410: "Gone",
    411: "Length Required",
    412: "Precondition Failed",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    423: "Locked",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
JSON_TYPE = ("Content-Type", "application/json")
Headers = list[tuple[str, str]]


def status_line(status: int) -> str:
    """``"404 Not Found"`` (``"599 Error"`` for a status without a known reason)."""
    return f"{status} {REASONS.get(status, 'Error')}"


def reason(status: int) -> str:
    return REASONS.get(status, str(status))


class HTTPError(Exception):
    """An answer other than success, raised by an app: status, message, extra headers."""

    def __init__(self, status: int, message: str, headers: Iterable[tuple[str, str]] = ()):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = list(headers)


def method_allowed(
    method: str, allowed: Collection[str], wording: str = "the method {} is"
) -> None:
    """405 with an ``Allow`` header unless ``method`` is one of ``allowed``.

    ``wording`` starts the message (each API keeps the words it always used).
    """
    if method not in allowed:
        listed = ", ".join(allowed)
        raise HTTPError(
            405,
            f"{wording.format(method)} not allowed here (allowed: {listed})",
            [("Allow", listed)],
        )


class JsonErrors:
    """One API's error vocabulary: the shape of its error body and the statuses it uses.

    ``body(status, message)`` gives the error document.  A
    :class:`~stowkit.corelib.errors.StowkitError` answers with its class's
    HTTP status when the API uses that status (``statuses``), else 500.
    """

    def __init__(
        self,
        body: Callable[[int, str], dict[str, Any]],
        name: str,
        log: logging.Logger,
        statuses: Collection[int] = REASONS,
    ) -> None:
        self.body = body
        self.name = name
        self.log = log
        self.statuses = statuses

    def encode(self, status: int, message: str) -> bytes:
        return json.dumps(self.body(status, message)).encode()

    def answer(self, exc: BaseException) -> tuple[int, bytes, Headers]:
        """(status, body, headers) for an exception an app raised."""
        if isinstance(exc, HTTPError):
            return exc.status, self.encode(exc.status, exc.message), exc.headers
        if isinstance(exc, StowkitError):
            status = exc.http_status if exc.http_status in self.statuses else 500
            if status == 500:
                self.log.error("%s: %s", self.name, exc)
            return status, self.encode(status, exc.message), []
        # A bug: logged with its traceback, never shown to the client.
        self.log.error("%s request failed:\n%s", self.name, traceback.format_exc())
        return 500, self.encode(500, "internal error (logged)"), []

    def respond(
        self, start_response: Callable[..., Any], status: int, message: str, headers: Headers = ()
    ) -> list[bytes]:
        """Send an error answer outside an app's own dispatch (middleware, a broken start)."""
        body = self.encode(status, message)
        start_response(
            status_line(status), [JSON_TYPE, ("Content-Length", str(len(body))), *headers]
        )
        return [body]
