"""Configuration through oslo.config.

One convention everywhere: group ``[NAMESPACE]`` names the backend
(``[volume] backend = btrfs``) and each backend registers its own group
``[NAMESPACE_BACKEND]`` (``[volume_btrfs] root = ...``).  The defaults are the
embedded ones: a btrfs root, local directories for blocks and images, SQLite
for the catalog, all under ``state_dir``.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Iterable, Sequence

from oslo_config import cfg

from stowkit.corelib.errors import ConfigError

DEFAULT_CONFIG_FILE = "/etc/stowkit/stowkit.conf"
#: Read (its ``*.conf`` files, in name order, after the config files) when no
#: ``--config-dir`` is given and it exists: oslo.config's ``PROJECT.conf.d``.
DEFAULT_CONFIG_DIR = "/etc/stowkit/stowkit.conf.d"

#: namespace -> backend used when the config names none
DEFAULT_BACKENDS: dict[str, str] = {
    "volume": "btrfs",
    "image": "local",
    "blockstore": "local",
    "catalog": "sql",
    "imagetask": "sql",
}

_DESCRIPTIONS = {
    "volume": "BTRFS volumes and snapshots",
    "image": "images of a region (Glance or a local directory)",
    "blockstore": "block devices made of fixed-size objects",
    "catalog": "the backup catalog",
    "imagetask": "the GlanceSync REST service's sync tasks",
}

common_opts = [
    cfg.StrOpt(
        "state_dir",
        default="/var/lib/stowkit",
        help="Where the embedded backends keep their data; other paths default below it.",
    ),
    cfg.StrOpt(
        "os_cloud",
        help="clouds.yaml entry every OpenStack backend logs in with, over the credentials "
        "of its own group (the command line's --os-cloud sets it).",
    ),
]


def _namespace_opts(namespace: str) -> list[cfg.Opt]:
    return [
        cfg.StrOpt(
            "backend",
            default=DEFAULT_BACKENDS[namespace],
            help=f"Backend for {_DESCRIPTIONS[namespace]}; "
            "`stowkit backends` lists the installed ones.",
        )
    ]


def register_core_opts(conf: cfg.ConfigOpts) -> None:
    from stowkit.corelib import servicelog

    conf.register_opts(common_opts)
    servicelog.register_opts(conf)
    for namespace in DEFAULT_BACKENDS:
        conf.register_opts(_namespace_opts(namespace), group=namespace)


def load_conf(
    config_files: Sequence[str] | None = None,
    overrides: Iterable[tuple[str | None, str, object]] = (),
    config_dirs: Sequence[str] | None = None,
) -> cfg.ConfigOpts:
    """Build a ConfigOpts from ``config_files`` and ``config_dirs``.

    As oslo.config does: ``config_files`` default to :data:`DEFAULT_CONFIG_FILE`
    and ``config_dirs`` to :data:`DEFAULT_CONFIG_DIR`, each default read only
    when it exists, each replaced (not extended) by what the caller names.
    The ``*.conf`` files of each directory are parsed in name order after
    the files, later values winning.  ``overrides`` are ``(group, option,
    value)`` triples applied on top, for command-line flags and tests.  A
    missing file or directory named by the caller, an unparsable file and a
    bad value of a core option are a :class:`ConfigError`.
    """
    if config_files:
        files = [os.path.abspath(f) for f in config_files]
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise ConfigError(f"config file not found: {missing[0]}")
    else:
        files = [DEFAULT_CONFIG_FILE] if os.path.isfile(DEFAULT_CONFIG_FILE) else []
    if config_dirs:
        dirs = [os.path.abspath(d) for d in config_dirs]
        missing = [d for d in dirs if not os.path.isdir(d)]
        if missing:
            raise ConfigError(f"config directory not found: {missing[0]}")
    else:
        dirs = [DEFAULT_CONFIG_DIR] if os.path.isdir(DEFAULT_CONFIG_DIR) else []
    conf = cfg.ConfigOpts()
    register_core_opts(conf)
    try:
        conf(args=[], project="stowkit", default_config_files=files, default_config_dirs=dirs)
    except cfg.ConfigFileParseError as exc:
        raise ConfigError(f"cannot parse config file {exc.config_file}: {exc.msg}") from None
    except cfg.Error as exc:
        raise ConfigError(f"bad configuration: {exc}") from None
    for group, name, value in overrides:
        conf.set_override(name, value, group)
    check_values(conf)
    return conf


_OSLO_VALUE_ERROR = re.compile(
    r"Value for option (?P<name>\S+)(?: from (?P<loc>LocationInfo\(.*?\)))? is not valid: "
    r"(?P<reason>.*)$",
    re.S,
)
_LOCATION_DETAIL = re.compile(r"detail='(?P<detail>[^']*)'")


def value_error(group: str | None, name: str, exc: Exception) -> ConfigError:
    """One line for a bad option value: ``[group] name`` and where it was set.

    oslo.config says ``Value for option NAME from LocationInfo(...) is not
    valid: REASON``, without the group; this names the group and the file.
    """
    text = " ".join(str(exc).split())
    reason, where = text, ""
    match = _OSLO_VALUE_ERROR.match(text)
    if match:
        reason = match["reason"]
        detail = _LOCATION_DETAIL.search(match["loc"] or "")
        if detail and detail["detail"]:
            where = f" (set in {detail['detail']})"
    return ConfigError(f"invalid value for [{group or 'DEFAULT'}] {name}{where}: {reason}")


def check_values(conf: cfg.ConfigOpts, groups: Iterable[str | None] | None = None) -> None:
    """Read every option registered so far (or of ``groups``); a bad value is a ConfigError.

    oslo.config converts values only when they are read, so a typo in a file
    would otherwise surface in the middle of the work, in oslo's own words.
    Commands call this once their options are registered, before any work.
    """
    wanted = None if groups is None else set(groups)
    for name in list(conf):
        try:
            value = conf[name]
        except (cfg.Error, ValueError) as exc:
            if wanted is None or None in wanted:
                raise value_error(None, name, exc) from None
            continue
        if not isinstance(value, cfg.ConfigOpts.GroupAttr):
            continue
        if wanted is not None and name not in wanted:
            continue
        for opt in list(value):
            try:
                value[opt]
            except (cfg.Error, ValueError) as exc:
                raise value_error(name, opt, exc) from None


def as_config_error(conf: cfg.ConfigOpts | None, exc: cfg.Error) -> ConfigError:
    """A ConfigError for an oslo.config error raised while reading an option."""
    if conf is not None and isinstance(exc, cfg.ConfigFileValueError):
        try:
            check_values(conf)
        except ConfigError as err:
            return err
    return ConfigError(f"bad configuration: {' '.join(str(exc).split())}")


#: Engines in corelib with option groups of their own: (module, group attr, opts attr);
#: an opts attr that is a function is called (its options are not all the module's own).
_ENGINE_OPTS: tuple[tuple[str, str, str], ...] = (
    ("stowkit.corelib.schedule", "GROUP", "opts"),
    ("stowkit.corelib.dockerplugin", "GROUP", "opts"),
    ("stowkit.corelib.imagesync.config", "GROUP", "image_sync_opts"),
    ("stowkit.corelib.catalogapi.server", "GROUP", "api_opts"),
    ("stowkit.corelib.nbd.export", "GROUP", "opts"),
    ("stowkit.corelib.nbd.tls", "GROUP", "opts"),
    ("stowkit.corelib.imagesync.api", "GROUP", "api_opts"),
    ("stowkit.corelib.agent.options", "GROUP", "sample_opts"),
    ("stowkit.corelib.catalogapi.trusts", "GROUP", "opts"),
)


def list_opts() -> list[tuple[str | None, list[cfg.Opt]]]:
    """For ``oslo-config-generator --namespace stowkit``.

    Backends are asked for their options through the registry, so a backend
    installed from another distribution shows up in the sample config too,
    and this module imports none of them.
    """
    from stowkit.corelib import registry  # late: registry imports this module

    result: list[tuple[str | None, list[cfg.Opt]]] = [(None, list(common_opts))]
    for namespace in DEFAULT_BACKENDS:
        result.append((namespace, _namespace_opts(namespace)))
    for module_name, group_attr, opts_attr in _ENGINE_OPTS:
        module = importlib.import_module(module_name)
        listed = getattr(module, opts_attr)
        result.append((getattr(module, group_attr), list(listed() if callable(listed) else listed)))
    for info in registry.installed():
        if info.options:
            result.append((info.group, list(info.options)))
    return result
