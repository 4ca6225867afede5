"""Finding and loading backends through stevedore.

Namespaces are ``stowkit.NAME`` for each NAME of
:data:`stowkit.corelib.config.DEFAULT_BACKENDS` (volume, image, blockstore,
catalog, imagetask).  A third-party distribution adds a backend by
declaring an entry point in one of them; ``load()`` then finds it by name.

Keystone has one owner, the ``stowkit.keystone`` entry point ``keystone``
(:func:`keystone`): corelib and cli log in, make trusts and register services
through it, and so import no client library.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any

from oslo_config import cfg
from stevedore import driver as sd_driver
from stevedore import exception as sd_exception
from stevedore import extension as sd_extension

from stowkit.corelib.config import DEFAULT_BACKENDS
from stowkit.corelib.driver import Driver
from stowkit.corelib.errors import BackendUnavailable, ConfigError

if TYPE_CHECKING:
    from stowkit.corelib.keystone import Keystone

NAMESPACES: tuple[str, ...] = tuple(DEFAULT_BACKENDS)
#: the entry point namespace and name of the one Keystone owner
KEYSTONE_NAMESPACE = "stowkit.keystone"
KEYSTONE_NAME = "keystone"


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


@functools.cache
def keystone() -> Keystone:
    """The Keystone owner (:class:`stowkit.corelib.keystone.Keystone`), loaded once."""
    try:
        manager = sd_driver.DriverManager(
            KEYSTONE_NAMESPACE,
            KEYSTONE_NAME,
            invoke_on_load=True,
            on_load_failure_callback=_reraise,
        )
    except sd_exception.NoMatches:
        raise BackendUnavailable(
            f"no {KEYSTONE_NAMESPACE} entry point {KEYSTONE_NAME!r}: is stowkit installed?"
        ) from None
    return manager.driver


@dataclasses.dataclass(frozen=True)
class BackendInfo:
    namespace: str
    name: str
    target: str
    distribution: str
    capabilities: tuple[str, ...] = ()
    options: Sequence[cfg.Opt] = ()
    #: Why the entry point could not be loaded (its import failed, or it is no Driver).
    error: str | None = None
    #: Why the loaded backend cannot work here (:meth:`Driver.unavailable`);
    #: only filled when :func:`installed` was asked to check.
    unavailable: str | None = None

    @property
    def group(self) -> str:
        return group_name(self.namespace, self.name)

    @property
    def available(self) -> bool:
        return self.error is None and self.unavailable is None

    @property
    def status(self) -> str:
        """``ok``, or ``unavailable: REASON`` (what ``stowkit backends`` shows)."""
        reason = self.error or self.unavailable
        return "ok" if reason is None else f"unavailable: {reason}"


def availability(
    cls: type[Driver], namespace: str, name: str, conf: cfg.ConfigOpts | None
) -> str | None:
    """``cls.unavailable()`` with the backend's configured options when ``conf`` is given.

    A check that itself fails is reported as the reason, never raised: one
    broken third-party backend must not hide the others.
    """
    try:
        opts = None
        if conf is not None:
            group = group_name(namespace, name)
            conf.register_group(cfg.OptGroup(group))  # a group even without options
            conf.register_opts(cls.options, group=group)
            opts = conf[group]
        return cls.unavailable(opts)
    except Exception as exc:
        return f"availability check failed: {type(exc).__name__}: {exc}"


def installed(
    namespaces: Sequence[str] = NAMESPACES,
    *,
    check: bool = False,
    conf: cfg.ConfigOpts | None = None,
) -> list[BackendInfo]:
    """Every backend installed, loaded to read its capabilities.

    A backend whose import fails is listed with its error rather than hidden:
    that is the first thing someone debugging a plugin needs to see.  With
    ``check``, each loaded backend is also asked whether it can work here
    (:meth:`Driver.unavailable`, which imports client libraries; ``conf``
    supplies the options it may depend on).  Only ``stowkit backends`` checks.
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
            is_driver = isinstance(cls, type) and issubclass(cls, Driver)
            error = None if is_driver else "not a stowkit Driver class"
            unavailable = None
            if check and is_driver:
                unavailable = availability(cls, namespace, ep.name, conf)
            infos.append(
                BackendInfo(
                    namespace,
                    ep.name,
                    ep.value,
                    dist,
                    tuple(sorted(str(c) for c in getattr(cls, "capabilities", ()))),
                    tuple(getattr(cls, "options", ())),
                    error=error,
                    unavailable=unavailable,
                )
            )
    infos.sort(key=lambda i: (NAMESPACES.index(i.namespace), i.name))
    return infos
