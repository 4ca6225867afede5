"""Finding and loading backends through stevedore.

Namespaces are ``stowkit.volume``, ``stowkit.image``, ``stowkit.blockstore``
and ``stowkit.catalog``.  A third-party distribution adds a backend by
declaring an entry point in one of them; ``load()`` then finds it by name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from oslo_config import cfg
from stevedore import driver as sd_driver
from stevedore import exception as sd_exception
from stevedore import extension as sd_extension

from stowkit.corelib.config import DEFAULT_BACKENDS
from stowkit.corelib.driver import Driver
from stowkit.corelib.errors import BackendUnavailable, ConfigError

NAMESPACES: tuple[str, ...] = tuple(DEFAULT_BACKENDS)


def entry_point_namespace(namespace: str) -> str:
    if namespace not in DEFAULT_BACKENDS:
        raise ConfigError(f"unknown backend namespace {namespace!r}")
    return f"stowkit.{namespace}"


def group_name(namespace: str, backend: str) -> str:
    return f"{namespace}_{backend}"


def _reraise(manager: Any, entry_point: Any, exc: BaseException) -> None:
    raise BackendUnavailable(
        f"backend {entry_point.name!r} ({entry_point.value}) cannot be loaded: {exc}"
    ) from exc


def driver_class(namespace: str, name: str) -> type[Driver]:
    """The class registered as ``name`` in ``namespace``, without instantiating it."""
    ns = entry_point_namespace(namespace)
    try:
        manager = sd_driver.DriverManager(
            ns, name, invoke_on_load=False, on_load_failure_callback=_reraise
        )
    except sd_exception.NoMatches:
        known = ", ".join(sorted({ep.name for ep in metadata.entry_points(group=ns)}))
        raise ConfigError(
            f"unknown {namespace} backend {name!r} (installed: {known or 'none'})"
        ) from None
    cls = manager.driver
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise BackendUnavailable(f"{ns} entry point {name!r} is not a stowkit Driver class")
    return cls


def load(namespace: str, conf: cfg.ConfigOpts, name: str | None = None, **overrides: Any) -> Driver:
    """Instantiate the backend of ``namespace`` that ``conf`` names (or ``name``).

    ``overrides`` set options of the backend's own group, e.g.
    ``load("volume", conf, root="/mnt/b")``.
    """
    entry_point_namespace(namespace)  # an unknown namespace is a ConfigError, not a KeyError
    backend = name or conf[namespace].backend
    cls = driver_class(namespace, backend)
    group = group_name(namespace, backend)
    conf.register_opts(cls.options, group=group)
    for key, value in overrides.items():
        conf.set_override(key, value, group)
    return cls(conf, group)


@dataclasses.dataclass(frozen=True)
class BackendInfo:
    namespace: str
    name: str
    target: str
    distribution: str
    capabilities: tuple[str, ...] = ()
    options: Sequence[cfg.Opt] = ()
    error: str | None = None

    @property
    def group(self) -> str:
        return group_name(self.namespace, self.name)


def installed(namespaces: Sequence[str] = NAMESPACES) -> list[BackendInfo]:
    """Every backend installed, loaded to read its capabilities.

    A backend whose import fails is listed with its error rather than hidden:
    that is the first thing someone debugging a plugin needs to see.
    """
    infos: list[BackendInfo] = []
    for namespace in namespaces:
        failures: dict[str, str] = {}

        def remember(manager: Any, ep: Any, exc: BaseException, _f=failures) -> None:
            _f[ep.name] = f"{type(exc).__name__}: {exc}"

        manager = sd_extension.ExtensionManager(
            entry_point_namespace(namespace),
            invoke_on_load=False,
            on_load_failure_callback=remember,
        )
        loaded = {ext.name: ext for ext in manager}
        for ep in manager.list_entry_points():
            ext = loaded.get(ep.name)
            dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
            if ext is None:
                infos.append(
                    BackendInfo(namespace, ep.name, ep.value, dist, error=failures.get(ep.name))
                )
                continue
            cls = ext.plugin
            infos.append(
                BackendInfo(
                    namespace,
                    ep.name,
                    ep.value,
                    dist,
                    tuple(sorted(getattr(cls, "capabilities", ()))),
                    tuple(getattr(cls, "options", ())),
                )
            )
    infos.sort(key=lambda i: (NAMESPACES.index(i.namespace), i.name))
    return infos
