"""What a request says: its base URL, its roles, and its body, read within bounds.

The body reader never holds more than the API's limit: a declared length over
it is refused before a byte is read, a chunked body is counted as it comes,
and reading stops at the request's deadline (set by :mod:`stowkit.corelib.wsgiserve`).
A body the app leaves unread is the server's to discard or close on, in
bounded pieces (:mod:`stowkit.corelib.wsgiserve`), never buffered whole.
"""

from __future__ import annotations

import re
import time
from typing import Any

from stowkit.corelib.web.responses import HTTPError

Environ = dict[str, Any]

#: A Content-Length is digits and nothing else (no sign, no spaces inside).
LENGTH = re.compile(r"[0-9]{1,19}")
#: Bodies are read in pieces of at most this many bytes, the deadline checked between.
READ_CHUNK = 65536


def base_url(environ: Environ) -> str:
    """``scheme://host[:port]/script`` the request came to (no trailing slash)."""
    host = environ.get("HTTP_HOST") or (
        f"{environ.get('SERVER_NAME', 'localhost')}:{environ.get('SERVER_PORT', '80')}"
    )
    return f"{environ.get('wsgi.url_scheme', 'http')}://{host}{environ.get('SCRIPT_NAME', '')}"


def roles(environ: Environ) -> frozenset[str]:
    """keystonemiddleware's ``X-Roles``: role names, comma-separated, lower case."""
    text = environ.get("HTTP_X_ROLES") or ""
    return frozenset(r.strip().lower() for r in text.split(",") if r.strip())


def chunked(environ: Environ) -> bool:
    return "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()


def has_body(environ: Environ) -> bool:
    return bool(environ.get("CONTENT_LENGTH")) or chunked(environ)


def read_done(environ: Environ) -> None:
    """Stop the request's clock (the server's reaper) once the body is read or not wanted."""
    done = environ.get("stowkit.read_done")
    if done is not None:
        done()


def body_unread(environ: Environ) -> bool:
    """Whether the request came with a body that :func:`read_body` did not finish."""
    return has_body(environ) and not environ.get("stowkit.body_read")


def read_body(environ: Environ, max_body: int) -> bytes:
    """The body, through the bounded reader: never more than ``max_body`` bytes.

    A Content-Length must be plain digits (400) and at most ``max_body``
    (413); a chunked body is counted as it comes (413 past the limit); a
    body shorter than its Content-Length is a 400, one that does not
    arrive before the request's deadline (``stowkit.read_deadline``, set
    by the server) or stalls past the connection timeout a 408.
    """
    length_text = (environ.get("CONTENT_LENGTH") or "").strip()
    if chunked(environ):
        known = None
    elif length_text:
        if not LENGTH.fullmatch(length_text):
            raise HTTPError(400, "Content-Length must be a whole number of bytes")
        known = int(length_text)
        if known > max_body:
            raise HTTPError(413, f"body too large: {known} bytes (limit {max_body})")
    else:
        environ["stowkit.body_read"] = True
        return b""
    stream = environ["wsgi.input"]
    deadline = environ.get("stowkit.read_deadline")
    want = max_body + 1 if known is None else known
    parts: list[bytes] = []
    got = 0

    def late() -> bool:
        return deadline is not None and time.monotonic() >= deadline

    while got < want:
        if late():
            raise HTTPError(408, "the request body did not arrive in time")
        try:
            piece = stream.read(min(READ_CHUNK, want - got))
        except TimeoutError:
            raise HTTPError(408, "the client stopped sending its request body") from None
        except OSError:
            raise HTTPError(400, "the connection broke while reading the body") from None
        except ValueError:
            raise HTTPError(400, "the chunked body is malformed") from None
        except Exception as exc:
            # oslo.middleware's sizelimit reader (webob's 413), set to our limit.
            if getattr(exc, "code", None) == 413:
                raise HTTPError(413, f"body too large (limit {max_body} bytes)") from None
            raise
        if not piece:
            break
        parts.append(piece)
        got += len(piece)
    if known is not None and got < known:
        if late():
            raise HTTPError(408, "the request body did not arrive in time")
        raise HTTPError(400, f"the body ended after {got} of its {known} bytes")
    if got > max_body:
        raise HTTPError(413, f"body too large (limit {max_body} bytes)")
    environ["stowkit.body_read"] = True
    return b"".join(parts)
