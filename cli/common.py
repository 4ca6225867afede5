"""Base classes and helpers every stowkit command shares.

The bases turn a :class:`stowkit.corelib.errors.StowkitError` into one line on stderr
and the error's own exit code, and make argparse say its complaint in one
line too, so no user mistake ever prints a traceback or a page of usage.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NoReturn

from cliff import command, lister, show

from stowkit.corelib.errors import StowkitError


def one_line_errors(parser: argparse.ArgumentParser, prog: str | None = None) -> None:
    """Make ``parser`` report usage errors as a single line and exit 2."""

    def error(message: str) -> NoReturn:
        name = prog or parser.prog
        parser.exit(2, f"{name}: error: {message} (see --help)\n")

    parser.error = error  # type: ignore[method-assign]


def install_log_handlers(
    handlers: Iterable[logging.Handler], level: int, logger: logging.Logger | None = None
) -> None:
    """Give ``logger`` (root by default) these handlers, replacing ours from an earlier call.

    Front ends may run many times in one process (tests, scripts embedding
    them); handlers left from an earlier run would write to streams that are
    closed by now, or twice.  Handlers of others are left alone.
    """
    logger = logger or logging.getLogger()
    for old in [h for h in logger.handlers if getattr(h, "_stowkit", False)]:
        logger.removeHandler(old)
    for handler in handlers:
        handler._stowkit = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(level)


def report(err: StowkitError, prog: str = "stowkit", stream: Any = None) -> int:
    """Print ``err`` as one line and return its exit code."""
    print(f"{prog}: {err}", file=stream or sys.stderr)
    return err.exit_code


def parse_size(text: str) -> int:
    """'64K', '1G', '1.5M', '4096' -> bytes (binary multiples, as dd and qemu-img use)."""
    from stowkit.corelib.errors import InvalidArgument

    units = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    raw = text.strip().upper().removesuffix("IB").removesuffix("B") if text else ""
    number, unit = raw, ""
    if raw and raw[-1] in units:
        number, unit = raw[:-1], raw[-1]
    try:
        value = float(number) * units[unit]
    except (ValueError, KeyError):
        raise InvalidArgument(f"invalid size {text!r}: use a number with K, M, G or T") from None
    if value <= 0 or value != int(value):
        raise InvalidArgument(f"invalid size {text!r}: must be a positive whole number of bytes")
    return int(value)


class _Base:
    """Mixin for cliff commands: config loading and error mapping."""

    app: Any

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)  # type: ignore[misc]
        one_line_errors(parser)
        return parser

    def get_epilog(self) -> str:
        # cliff appends "provided by the X plugin" to every command's epilog,
        # and to learn X it maps every installed distribution to its modules
        # (importlib.metadata.packages_distributions: 0.6 s here) on every
        # run, help or not.  Commands of this distribution need no such note;
        # plugin commands keep cliff's.
        if type(self).__module__.partition(".")[0] == __name__.partition(".")[0]:
            hooks = (h.obj.get_epilog() for h in self._hooks if h.obj is not None)  # type: ignore[attr-defined]
            return "\n\n".join([self._epilog or "", *filter(None, hooks)])  # type: ignore[attr-defined]
        return super().get_epilog()  # type: ignore[misc]

    def run(self, parsed_args: argparse.Namespace) -> int:
        try:
            self.app.conf  # noqa: B018 - a bad config file is reported here, once
            return super().run(parsed_args)  # type: ignore[misc]
        except StowkitError as err:
            return report(err, self.app.NAME, self.app.stderr)

    def driver(self, namespace: str) -> Any:
        return self.app.driver(namespace)


class Command(_Base, command.Command):
    """A command that prints nothing in particular."""


class Lister(_Base, lister.Lister):
    """A command that prints rows (``-f table|json|yaml|csv|value``)."""


class ShowOne(_Base, show.ShowOne):
    """A command that prints one object as name/value pairs."""


def rows(
    objects: Iterable[Any], columns: Sequence[str], getters: Mapping[str, Any] | None = None
) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
    """(headers, rows) for a Lister from objects' attributes.

    ``columns`` are attribute names; headers are them title-cased with spaces.
    ``getters`` maps a column to a function for computed values.
    """
    getters = getters or {}
    headers = tuple(c.replace("_", " ").title() for c in columns)
    data = [
        tuple(getters[c](o) if c in getters else getattr(o, c) for c in columns) for o in objects
    ]
    return headers, data
