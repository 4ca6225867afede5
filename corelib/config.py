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
from collections.abc import Iterable, Sequence

from oslo_config import cfg

from stowkit.corelib.errors import ConfigError

DEFAULT_CONFIG_FILE = "/etc/stowkit/stowkit.conf"

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
    conf.register_opts(common_opts)
    for namespace in DEFAULT_BACKENDS:
        conf.register_opts(_namespace_opts(namespace), group=namespace)


def load_conf(
    config_files: Sequence[str] | None = None,
    overrides: Iterable[tuple[str | None, str, object]] = (),
) -> cfg.ConfigOpts:
    """Build a ConfigOpts from ``config_files`` (or the default file if it exists).

    ``overrides`` are ``(group, option, value)`` triples applied on top, for
    command-line flags and tests.  A missing or unparsable file named by the
    user is a :class:`ConfigError`.
    """
    if config_files:
        files = [os.path.abspath(f) for f in config_files]
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise ConfigError(f"config file not found: {missing[0]}")
    else:
        files = [DEFAULT_CONFIG_FILE] if os.path.isfile(DEFAULT_CONFIG_FILE) else []
    conf = cfg.ConfigOpts()
    register_core_opts(conf)
    try:
        conf(args=[], project="stowkit", default_config_files=files, default_config_dirs=[])
    except cfg.ConfigFileParseError as exc:
        raise ConfigError(f"cannot parse config file {exc.config_file}: {exc.msg}") from None
    except cfg.Error as exc:
        raise ConfigError(f"bad configuration: {exc}") from None
    for group, name, value in overrides:
        conf.set_override(name, value, group)
    return conf


#: Engines in corelib with option groups of their own: (module, group attr, opts attr).
_ENGINE_OPTS: tuple[tuple[str, str, str], ...] = (
    ("stowkit.corelib.scheduler", "GROUP", "opts"),
    ("stowkit.corelib.dockerplugin", "GROUP", "opts"),
    ("stowkit.corelib.imagesync.config", "GROUP", "image_sync_opts"),
    ("stowkit.corelib.catalogapi.server", "GROUP", "api_opts"),
    ("stowkit.corelib.nbd.export", "GROUP", "opts"),
    ("stowkit.corelib.imagesync.api", "GROUP", "api_opts"),
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
        result.append((getattr(module, group_attr), list(getattr(module, opts_attr))))
    for info in registry.installed():
        if info.options:
            result.append((info.group, list(info.options)))
    return result
