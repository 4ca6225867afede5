"""Read tools/commands.txt: every external command stowkit's tests, demos and benchmarks run.

The table is plain text so that bash (tools/lib.sh, sourced by tools/try-it and
tools/test-all) and Python (this module: the harness in tools/stack and
tests/unit/test_commands_table.py) read the same file.  One row per command:

    COMMAND   PACKAGE   USED-BY   SERVICES

``COMMAND`` is the program's name (``-`` for a package that brings no command run by
name: a library, a plugin, headers); ``PACKAGE`` the Debian package that installs it;
``USED-BY`` a comma-separated subset of ``test``, ``demo``, ``bench`` and ``venv``
(building stowkit's own ``.venv``); ``SERVICES`` the harness services (tools/stack)
whose ``start`` needs it, comma-separated, or ``-``.  Lines starting with ``#`` are
comments.

    python3 -m tools.commands packages test bench venv   # the packages, one a line
    python3 -m tools.commands packages --service swift
    python3 -m tools.commands command qemu-img           # -> qemu-utils

Only the standard library is imported: the harness imports this before any venv exists.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from dataclasses import dataclass

TABLE = pathlib.Path(__file__).resolve().with_name("commands.txt")
USERS = ("test", "demo", "bench", "venv")


class TableError(Exception):
    """tools/commands.txt is malformed; the message names the line."""


@dataclass(frozen=True)
class Row:
    command: str | None  # None: the package brings no command run by name
    package: str
    users: frozenset[str]
    services: frozenset[str]
    line: int


def _split(field: str) -> frozenset[str]:
    return frozenset() if field == "-" else frozenset(field.split(","))


def rows(path: pathlib.Path = TABLE) -> list[Row]:
    out = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        fields = text.split()
        if len(fields) != 4:
            raise TableError(f"{path}:{number}: want COMMAND PACKAGE USED-BY SERVICES: {raw!r}")
        command, package, users, services = fields
        row = Row(
            None if command == "-" else command, package, _split(users), _split(services), number
        )
        unknown = row.users - set(USERS)
        if unknown or not row.users:
            raise TableError(f"{path}:{number}: USED-BY must be a subset of {USERS}: {raw!r}")
        out.append(row)
    return out


def commands(path: pathlib.Path = TABLE) -> dict[str, Row]:
    """Command name -> its row."""
    return {row.command: row for row in rows(path) if row.command}


def packages(*users: str, service: str | None = None, path: pathlib.Path = TABLE) -> list[str]:
    """Sorted package names of the rows used by any of ``users`` or needed by ``service``."""
    wanted = set(users)
    found = {
        row.package
        for row in rows(path)
        if row.users & wanted or (service is not None and service in row.services)
    }
    return sorted(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tools.commands", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    pk = sub.add_parser("packages", help="packages for the given users (or one service)")
    pk.add_argument("users", nargs="*", metavar="USER", help=f"any of {', '.join(USERS)}")
    pk.add_argument("--service")
    cm = sub.add_parser("command", help="the package of one command")
    cm.add_argument("name")
    args = parser.parse_args(argv)
    if args.what == "packages" and set(args.users) - set(USERS):
        parser.error(f"users are {', '.join(USERS)}")
    try:
        if args.what == "packages":
            print("\n".join(packages(*args.users, service=args.service)))
            return 0
        row = commands().get(args.name)
    except TableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if row is None:
        print(f"{args.name}: not in {TABLE}", file=sys.stderr)
        return 1
    print(row.package)
    return 0


if __name__ == "__main__":
    sys.exit(main())
