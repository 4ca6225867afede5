"""The one rule for names that end up as paths, containers or URL parts.

Volume, snapshot-volume, block device and region names all pass through
:func:`check_name` before any filesystem, Swift or Glance call.  The rule is
Docker's own for volume names, ``[A-Za-z0-9][A-Za-z0-9_.-]*``, capped so a
snapshot suffix still fits in a 255-byte file name.  Nothing that matches can
hold a path separator, start with a dot, or carry a shell metacharacter.

Peers (``[user@]host[:port]``, what ``volume send``/``sync`` and the
scheduler's ``replicate:``/``synchronize:`` take) pass through
:func:`check_host`, the same rule wherever a host is accepted.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from stowkit.corelib.errors import InvalidArgument, InvalidName

MAX_NAME_LENGTH = 200
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_name(name: object, what: str = "name") -> str:
    """Return ``name`` if it obeys the rule, else raise :class:`InvalidName`."""
    if not isinstance(name, str) or not name:
        raise InvalidName(f"invalid {what}: it must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName(
            f"invalid {what} {name[:20]!r}...: longer than {MAX_NAME_LENGTH} characters"
        )
    if not _NAME.fullmatch(name):
        raise InvalidName(
            f"invalid {what} {name!r}: use letters, digits, '_', '.' and '-', "
            "starting with a letter or digit"
        )
    return name


# [user@]host[:port]: a POSIX-ish user name, a DNS name (at most 253 characters)
# or a bracketed address, a decimal port.  Never an ssh option, never a shell word.
_HOST = re.compile(
    r"(?:(?P<user>[A-Za-z_][A-Za-z0-9_.-]{0,31})@)?"
    r"(?P<host>[A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:.]{2,45}\])"
    r"(?::(?P<port>[0-9]{1,5}))?"
)


class HostSpec(NamedTuple):
    user: str | None  #: None when the spec names none
    host: str  #: as given, brackets of an address included
    port: int | None  #: None when the spec names none


def check_host(spec: object) -> HostSpec:
    """Split ``[user@]host[:port]`` or raise :class:`InvalidArgument` (port 1-65535)."""
    match = _HOST.fullmatch(spec) if isinstance(spec, str) else None
    shown = repr(spec) if len(repr(spec)) <= 60 else repr(spec)[:60] + "..."
    if match is None:
        raise InvalidArgument(
            f"invalid host {shown}: expected [user@]host[:port] with a plain host name or address"
        )
    port = int(match.group("port")) if match.group("port") else None
    if port is not None and not 0 < port < 65536:
        raise InvalidArgument(f"invalid host {shown}: port out of range")
    return HostSpec(match.group("user"), match.group("host"), port)
