"""The configured backends of one configuration, each opened when first used.

:func:`open_backends` (``stowkit.open``) reads the configuration files as
the command line does (:func:`stowkit.corelib.config.load_conf`) and returns
a :class:`Backends`, whose ``volumes``, ``images``, ``blocks`` and
``catalog`` are loaded through :func:`stowkit.corelib.registry.load` on first
access only: opening the configuration imports no backend and touches no
file system, service or database.

Keyword overrides name either an option of ``[DEFAULT]`` (``state_dir=...``)
or a group, with a mapping of its options: a namespace group
(``image={"backend": "local"}``) or a backend's own group
(``image_local={"path": "/srv/images"}``), applied when that backend is
loaded.  A backend group for a backend that is not the one configured is
ignored, as its section in a configuration file would be.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from oslo_config import cfg

from stowkit.corelib import config, registry
from stowkit.corelib.errors import ConfigError

if TYPE_CHECKING:
    from stowkit.corelib.blockstore import BlockStore
    from stowkit.corelib.catalog import Catalog
    from stowkit.corelib.driver import Driver
    from stowkit.corelib.image import ImageStore
    from stowkit.corelib.volume import VolumeDriver


class Backends:
    """The backends a configuration names, loaded lazily and closed together.

    Use it as a context manager (or call :meth:`close`) to release what the
    loaded backends hold (connections, pools).  Each property loads its
    backend once and returns the same object afterwards.
    """

    def __init__(
        self,
        conf: cfg.ConfigOpts,
        backend_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        #: The oslo.config options, for engines that take ``conf``.
        self.conf = conf
        self._backend_overrides = dict(backend_overrides or {})
        self._loaded: list[Driver] = []

    def load(self, namespace: str) -> Driver:
        """A new instance of the backend configured for ``namespace`` (e.g. ``"image"``).

        :raises ConfigError: unknown namespace or backend, or an override naming
            an option the backend does not have.
        :raises BackendUnavailable: the backend's module cannot be imported.
        """
        name = self.conf[namespace].backend if namespace in config.DEFAULT_BACKENDS else None
        overrides = self._backend_overrides.get(registry.group_name(namespace, str(name)), {})
        try:
            driver = registry.load(namespace, self.conf, **overrides)
        except (cfg.NoSuchOptError, cfg.NoSuchGroupError) as exc:
            raise ConfigError(f"bad override for the {namespace} backend: {exc}") from None
        self._loaded.append(driver)
        return driver

    @functools.cached_property
    def volumes(self) -> VolumeDriver:
        """The ``[volume]`` backend (:class:`~stowkit.corelib.volume.VolumeDriver`)."""
        return self.load("volume")  # type: ignore[return-value]

    @functools.cached_property
    def images(self) -> ImageStore:
        """The ``[image]`` backend (:class:`~stowkit.corelib.image.ImageStore`)."""
        return self.load("image")  # type: ignore[return-value]

    @functools.cached_property
    def blocks(self) -> BlockStore:
        """The ``[blockstore]`` backend (:class:`~stowkit.corelib.blockstore.BlockStore`)."""
        return self.load("blockstore")  # type: ignore[return-value]

    @functools.cached_property
    def catalog(self) -> Catalog:
        """The ``[catalog]`` backend (:class:`~stowkit.corelib.catalog.Catalog`)."""
        return self.load("catalog")  # type: ignore[return-value]

    def close(self) -> None:
        """Close every backend loaded so far (:meth:`Driver.close`)."""
        loaded, self._loaded = self._loaded, []
        for driver in reversed(loaded):
            driver.close()

    def __enter__(self) -> Backends:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_backends(
    config_files: Sequence[str] | None = None,
    *,
    config_dirs: Sequence[str] | None = None,
    **overrides: Any,
) -> Backends:
    """Read the configuration and return its :class:`Backends`, none loaded yet.

    ``config_files`` and ``config_dirs`` are read as the command line's
    ``--config-file`` and ``--config-dir`` are (default
    ``/etc/stowkit/stowkit.conf`` and ``stowkit.conf.d`` when they exist).
    ``overrides`` win over the files: ``state_dir="/tmp/kit"`` sets a
    ``[DEFAULT]`` option, ``blockstore={"backend": "local"}`` a namespace's
    group and ``blockstore_local={"path": "/srv/blocks"}`` a backend's group.

    :raises ConfigError: a file or directory is missing or unreadable, a
        value is invalid, or an override names an unknown option or group.
    """
    core: list[tuple[str | None, str, object]] = []
    backend_groups: dict[str, Mapping[str, Any]] = {}
    for key, value in overrides.items():
        if not isinstance(value, Mapping):
            core.append((None, key, value))
        elif key in config.DEFAULT_BACKENDS:
            core.extend((key, name, item) for name, item in value.items())
        elif key.partition("_")[0] in config.DEFAULT_BACKENDS:
            backend_groups[key] = value
        else:
            raise ConfigError(f"unknown configuration group {key!r}")
    try:
        conf = config.load_conf(config_files, core, config_dirs)
    except (cfg.NoSuchOptError, cfg.NoSuchGroupError) as exc:
        raise ConfigError(f"bad override: {exc}") from None
    return Backends(conf, backend_groups)
