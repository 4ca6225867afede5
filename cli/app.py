"""The ``stowkit`` application: ``stowkit [--config-file F] NOUN VERB ...``.

Built-in commands are listed in each ``cli`` module's ``COMMANDS`` table, so
adding one needs no reinstall; other distributions add theirs through the
``stowkit.cli`` entry-point namespace, as OpenStack client plugins do.
"""

from __future__ import annotations

import functools
import importlib
import logging
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from cliff.app import App
from cliff.commandmanager import CommandManager
from oslo_config import cfg as oslo_cfg

from stowkit.cli.common import install_log_handlers, one_line_errors, report
from stowkit.corelib import config, registry
from stowkit.corelib.errors import StowkitError

#: Modules whose ``COMMANDS`` the app registers, in help order.
BUILTIN_MODULES: tuple[str, ...] = (
    "stowkit.cli.backends",
    "stowkit.cli.volume",
    "stowkit.cli.snapshot",
    "stowkit.cli.schedule",
    "stowkit.cli.plugin",
    "stowkit.cli.blockstore",
    "stowkit.cli.nbdserve",
    "stowkit.cli.image",
    "stowkit.cli.catalog",
    "stowkit.cli.catalog_register",
    "stowkit.cli.agent",
)


def _version() -> str:
    try:
        return metadata.version("stowkit")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _lift(argv: Sequence[str], options: Sequence[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Pull every ``OPTION VALUE`` and ``OPTION=VALUE`` of ``options`` out of ``argv``.

    The one parser of the config arguments: returns each option's values and
    what is left, in order.  An option with no value left stays in the rest,
    so argparse says the value is missing.
    """
    found: dict[str, list[str]] = {option: [] for option in options}
    rest: list[str] = []
    it = iter(argv)
    for arg in it:
        option, eq, value = arg.partition("=")
        if option in found and eq:
            found[option].append(value)
        elif arg in found:
            following = next(it, None)
            if following is None:
                rest.append(arg)
            else:
                found[arg].append(following)
        else:
            rest.append(arg)
    return found, rest


def split_config_args(argv: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """Pull every ``--config-file F`` and ``--config-dir D`` out of ``argv``, wherever they stand.

    cliff only knows global options placed before the command; users write
    ``stowkit volume list --config-file F`` too, and both must work.
    Returns ``(files, dirs, rest)``.
    """
    found, rest = _lift(argv, ("--config-file", "--config-dir"))
    return found["--config-file"], found["--config-dir"], rest


def split_config_files(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """:func:`split_config_args` for ``--config-file`` only (``--config-dir`` stays in rest)."""
    found, rest = _lift(argv, ("--config-file",))
    return found["--config-file"], rest


#: cliff's verbose level (default 1, -q 0, each -v one more) to the console's log level
CONSOLE_LEVELS = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO}


class StowkitApp(App):
    NAME = "stowkit"

    def __init__(self, config_files: Sequence[str] = (), config_dirs: Sequence[str] = ()) -> None:
        manager = CommandManager("stowkit.cli")
        for module_name in BUILTIN_MODULES:
            # A built-in module that cannot be imported is a broken install or
            # a bug: raised, never skipped (its commands would just vanish).
            module = importlib.import_module(module_name)
            for name, cls in module.COMMANDS.items():
                manager.add_command(name, cls)
        super().__init__(
            description="stowkit: storage operations for small OpenStack and Docker clusters",
            version=_version(),
            command_manager=manager,
            deferred_help=True,
        )
        self._config_files = list(config_files)
        self._config_dirs = list(config_dirs)
        self._drivers: dict[str, Any] = {}

    def build_option_parser(self, description, version, argparse_kwargs=None):
        # No abbreviations: `image sync --config k=v` must not become --config-file.
        argparse_kwargs = {**(argparse_kwargs or {}), "prog": self.NAME, "allow_abbrev": False}
        parser = super().build_option_parser(description, version, argparse_kwargs)
        parser.add_argument(
            "--config-file",
            metavar="PATH",
            action="append",
            help=f"Configuration file (repeatable; default {config.DEFAULT_CONFIG_FILE} "
            "when it exists). May also follow the command.",
        )
        parser.add_argument(
            "--config-dir",
            metavar="DIR",
            action="append",
            help="Directory whose files ending in .conf are read, in name order, after the "
            "config files "
            f"(repeatable; default {config.DEFAULT_CONFIG_DIR} when it exists). "
            "May also follow the command.",
        )
        parser.add_argument(
            "--os-cloud",
            metavar="NAME",
            default=None,
            help="clouds.yaml entry every OpenStack backend logs in with (over the "
            "credentials of its config group; OS_CLOUD is used only when the group has none).",
        )
        one_line_errors(parser, "stowkit")
        return parser

    @functools.cached_property
    def conf(self):
        conf = config.load_conf(self._config_files, config_dirs=self._config_dirs)
        cloud = getattr(getattr(self, "options", None), "os_cloud", None)
        if cloud:
            # Not defaulted from OS_CLOUD: the environment must not beat the config file.
            conf.set_override("os_cloud", cloud)
        return conf

    def driver(self, namespace: str) -> Any:
        """The configured backend of ``namespace``, loaded once per run.

        Every option registered by then (the backend's group included) is
        checked first, so a bad value is one line naming it, before any work.
        """
        if namespace not in self._drivers:
            conf = self.conf
            registry.entry_point_namespace(namespace)
            backend = conf[namespace].backend
            cls = registry.driver_class(namespace, backend)
            conf.register_opts(cls.options, group=registry.group_name(namespace, backend))
            config.check_values(conf)
            try:
                self._drivers[namespace] = registry.load(namespace, conf)
            except oslo_cfg.Error as exc:
                raise config.as_config_error(conf, exc) from None
        return self._drivers[namespace]

    def configure_logging(self) -> None:
        # cliff adds a console handler to the root logger on every run; keep
        # only this run's (see install_log_handlers).
        root = logging.getLogger()
        before = set(root.handlers)
        super().configure_logging()
        added = [h for h in root.handlers if h not in before]
        for handler in added:
            root.removeHandler(handler)
            if type(handler) is logging.StreamHandler:
                # As openstackclient: warnings by default, -v info, -vv debug.
                # cliff shows INFO by default, and a command's own output
                # would come twice (the library's log of it, then its line).
                handler.setLevel(CONSOLE_LEVELS.get(self.options.verbose_level, logging.DEBUG))
        install_log_handlers(added, root.level)

    def setup_service_logging(self) -> None:
        """oslo.log for a long-running command, with cliff's --debug/-vv/--log-file on top."""
        from stowkit.corelib import servicelog

        debug = bool(self.options.debug) or self.options.verbose_level >= 2
        servicelog.setup(self.conf, debug=debug, log_file=self.options.log_file)

    def get_fuzzy_matches(self, cmd: str) -> list[str]:
        # An unknown *option* is not a misspelt command: say so in one line.
        return [] if cmd.startswith("-") else super().get_fuzzy_matches(cmd)

    def clean_up(self, cmd, result, err):
        for drv in self._drivers.values():
            drv.close()


def main(argv: Sequence[str] | None = None) -> int:
    files, dirs, rest = split_config_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return StowkitApp(files, dirs).run(rest)
    except StowkitError as err:
        return report(err)


if __name__ == "__main__":
    sys.exit(main())
