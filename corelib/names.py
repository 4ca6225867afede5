"""The one rule for names that end up as paths, containers or URL parts.

Volume, snapshot-volume, block device and region names all pass through
:func:`check_name` before any filesystem, Swift or Glance call.  The rule is
Docker's own for volume names, ``[A-Za-z0-9][A-Za-z0-9_.-]*``, capped so a
snapshot suffix still fits in a 255-byte file name.  Nothing that matches can
hold a path separator, start with a dot, or carry a shell metacharacter.
"""

from __future__ import annotations

import re

from stowkit.corelib.errors import InvalidName

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
