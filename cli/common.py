"""Base classes and helpers every stowkit command shares.

The bases turn a :class:`stowkit.corelib.errors.StowkitError` into one line on stderr
and the error's own exit code, and make argparse say its complaint in one
line too, so no user mistake ever prints a traceback or a page of usage.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NoReturn

from cliff import columns, command, lister, show
from oslo_config import cfg

from stowkit.corelib import config
from stowkit.corelib.errors import InvalidArgument, StowkitError


class UsageError(InvalidArgument):
    """The command line itself is wrong, as argparse would say (e.g. an unknown ``-c``).

    Exit code 2, argparse's: not in :data:`~stowkit.corelib.errors.EXIT_CODES`,
    which holds the codes of errors the library raises.
    """

    exit_code = 2


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


def port_type(lowest: int = 1):
    """An argparse ``type`` for a TCP port from ``lowest`` to 65535 (a usage error otherwise)."""

    def port(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = -1
        if not lowest <= value <= 65535:
            raise argparse.ArgumentTypeError(f"invalid port {text!r}: use {lowest} to 65535")
        return value

    port.__name__ = "port"
    return port


def add_listen_options(parser: argparse.ArgumentParser, group: str, no_auth_help: str) -> None:
    """``--bind``, ``--port``, ``--workers`` and ``--no-auth`` of an HTTP service of ``[group]``."""
    parser.add_argument("--bind", metavar="ADDR", help=f"listen address ([{group}] bind)")
    parser.add_argument("--port", type=port_type(), metavar="N", help=f"TCP port ([{group}] port)")
    parser.add_argument("--workers", type=int, metavar="N", help="server processes")
    parser.add_argument("--no-auth", action="store_true", help=no_auth_help)


def listen_address(parsed_args: argparse.Namespace, opts: Any) -> tuple[str, int]:
    """The command line's ``--bind``/``--port`` over the service's options.

    A taken port or a foreign address is said now, before any work or announcement.
    """
    from stowkit.corelib import wsgiserve  # late: only servers need cheroot

    bind = parsed_args.bind or opts.bind
    port = parsed_args.port or opts.port
    wsgiserve.check_port(bind, port)
    return bind, port


class ServeCommand:
    """What the ``serve`` command of an HTTP API of ``[group]`` shares (a mixin of Command).

    The listen options (``--bind``, ``--port``, ``--workers``, ``--no-auth``),
    the group's options checked before any work, and the line announcing the service.
    """

    service = True  # logs through oslo.log
    group = ""
    no_auth_help = ""
    app: Any

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)  # type: ignore[misc]
        add_listen_options(parser, self.group, self.no_auth_help)
        return parser

    def listen(self, parsed_args: argparse.Namespace, register: Any) -> tuple[Any, str, int]:
        """(the group's options, bind address, port) once ``register(conf)`` and the
        values are checked: before any database or task is touched."""
        conf = self.app.conf
        register(conf)
        config.check_values(conf)
        opts = conf[self.group]
        bind, port = listen_address(parsed_args, opts)
        return opts, bind, port

    @staticmethod
    def auth(parsed_args: argparse.Namespace) -> str | None:
        """The auth strategy ``--no-auth`` forces (None: the configuration's)."""
        return "noauth" if parsed_args.no_auth else None

    def announce(
        self, what: str, bind: str, port: int, workers: str, parsed_args: argparse.Namespace
    ) -> None:
        strategy = "none" if parsed_args.no_auth else self.app.conf[self.group].auth_strategy
        self.app.stderr.write(f"{what} on http://{bind}:{port} ({workers}, auth {strategy})\n")


def parse_size(text: str) -> int:
    """'64K', '1G', '1.5M', '4096' -> bytes (binary multiples, as dd and qemu-img use)."""
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


def human(size: int) -> str:
    """1073741824 -> '1 GiB'; exact multiples stay exact, others get one decimal."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift:
            value = size / (1 << shift)
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{size} B"


class Bytes(columns.FormattableColumn):
    """A size: integer bytes for json/yaml/csv/value/shell, human units in a table.

    The one machine-output convention (doc/cli.md): no formatter but
    ``table`` ever prints ``"1 MiB"``.  ``None`` (unknown) is null / empty.
    """

    def human_readable(self) -> str:
        return "" if self._value is None else human(self._value)

    def machine_readable(self) -> int | None:
        return None if self._value is None else int(self._value)

    def __lt__(self, other: object) -> bool:  # --sort-column on a size
        mine = -1 if self._value is None else self._value
        theirs = getattr(other, "_value", other)
        return mine < (-1 if theirs is None else theirs)


def utc_time(value: dt.datetime | float | int | None) -> str | None:
    """A time as ISO-8601 UTC with ``Z`` (``2026-01-31T12:00:00Z``), the one time format.

    Takes an aware datetime, a naive one (taken as UTC, as stowkit stores
    them) or seconds since the epoch; ``None`` stays ``None``.  To the
    second, the one precision of every time column (doc/cli.md).
    """
    if value is None:
        return None
    if isinstance(value, int | float):
        value = dt.datetime.fromtimestamp(value, dt.UTC)
    elif value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _for_output(value: Any, table: bool) -> Any:
    """A value as the formatter should see it (doc/cli.md, "Machine output").

    A table shows sizes in human units (cliff asks :class:`Bytes` itself,
    and sorts by the bytes) and nothing for an unknown value; every other
    format gets the plain integer (a number in csv, not a quoted string).
    """
    if table:
        return "" if value is None else value
    if isinstance(value, Bytes):
        return value.machine_readable()
    return value


class _Base:
    """Mixin for cliff commands: config loading and error mapping."""

    app: Any
    #: A long-running command (a server, the plugin): it logs the OpenStack way,
    #: through oslo.log's [DEFAULT] options (corelib/servicelog.py).
    service = False

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
            try:
                self.app.conf  # noqa: B018 - a bad config file is reported here, once
                if self.service:
                    self.app.setup_service_logging()
                return super().run(parsed_args)  # type: ignore[misc]
            except cfg.Error as exc:
                # An option read in the middle of the work (registered late):
                # still one line naming it, and the config exit code.
                raise config.as_config_error(self.app.conf, exc) from None
        except UsageError as err:
            print(f"{self.app.NAME}: error: {err} (see --help)", file=self.app.stderr)
            return err.exit_code
        except StowkitError as err:
            return report(err, self.app.NAME, self.app.stderr)

    def driver(self, namespace: str) -> Any:
        return self.app.driver(namespace)

    def produce_output(self, parsed_args, column_names, data):
        # cliff ignores an unknown -c when another one matches, and says an
        # internal ValueError (exit 1) when none does: a usage error instead.
        unknown = [c for c in getattr(parsed_args, "columns", None) or () if c not in column_names]
        if unknown:
            raise UsageError(
                f"unknown column {unknown[0]!r} (-c): choose from {', '.join(column_names)}"
            )
        table = getattr(parsed_args, "formatter", "table") == "table"
        if isinstance(self, lister.Lister):
            data = (tuple(_for_output(v, table) for v in row) for row in data)
        else:
            data = tuple(_for_output(v, table) for v in data)
        return super().produce_output(parsed_args, column_names, data)  # type: ignore[misc]


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

    ``columns`` are attribute names, and the headers too (doc/cli.md: one
    snake_case name per field, the same in every command and format).
    ``getters`` maps a column to a function for computed values.
    """
    getters = getters or {}
    headers = tuple(columns)
    data = [
        tuple(getters[c](o) if c in getters else getattr(o, c) for c in columns) for o in objects
    ]
    return headers, data
