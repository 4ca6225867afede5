"""The base every backend derives from.

A backend is a class registered under one of the ``stowkit.NAMESPACE``
entry-point namespaces.  It declares the oslo.config options it needs (they
are registered in its own group, ``NAMESPACE_NAME``, e.g. ``[volume_btrfs]``),
the optional features it offers (``capabilities``, members of its interface
module's capability enum), so front ends can ask before they promise a
feature rather than fail half-way, and a cheap check of whether it can work
on this host at all (:meth:`Driver.unavailable`), which ``stowkit backends``
shows.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Sequence
from typing import ClassVar

from oslo_config import cfg

from stowkit.corelib.errors import InvalidArgument


def import_failure(module: str) -> str | None:
    """Why ``module`` cannot be imported here, or None when it imports."""
    try:
        importlib.import_module(module)
    except Exception as exc:  # ImportError, or a library that breaks while loading
        return f"cannot import {module}: {exc}"
    return None


class Driver(abc.ABC):  # noqa: B024 - the interfaces add the abstract methods
    """The base of every backend: options, capabilities, availability, close.

    Lifecycle: :func:`stowkit.corelib.registry.load` registers the class's
    :attr:`options` in its group and builds it with ``cls(conf, group)``;
    the constructor must be cheap and local (no connection, no login: those
    happen on first use, so ``stowkit backends`` and ``--help`` never wait
    for a service).  The front end then calls the interface's methods, from
    several threads when it serves requests, and :meth:`close` once, when
    it is done.  Errors a user can cause are raised as
    :mod:`stowkit.corelib.errors` classes only.
    """

    #: The oslo.config options of this backend, registered under ``group``.
    options: ClassVar[Sequence[cfg.Opt]] = ()
    #: The optional features this backend offers: members of the capability
    #: enum of its interface module (``VolumeCapability``, ``ImageCapability``,
    #: ``BlockStoreCapability``, ``CatalogCapability``).  What every backend of
    #: a namespace must do is the interface itself, never a capability.
    capabilities: ClassVar[frozenset[str]] = frozenset()
    #: Modules of the client library the backend cannot work without; the
    #: default :meth:`unavailable` tries to import each of them.
    client_modules: ClassVar[Sequence[str]] = ()

    def __init__(self, conf: cfg.ConfigOpts, group: str) -> None:
        """Keep ``conf`` and the backend's option ``group``; reach nothing yet.

        :param conf: the configuration, with this backend's options registered.
        :param group: the backend's own group, ``NAMESPACE_NAME``.
        """
        # The registry has registered ``options`` under ``group`` already;
        # registering again is harmless and lets tests build drivers directly.
        conf.register_opts(self.options, group=group)
        self.conf = conf
        self.group = group

    @classmethod
    def unavailable(cls, opts: cfg.ConfigOpts.GroupAttr | None = None) -> str | None:
        """Why this backend cannot work on this host, or None when it can.

        Cheap and local: it imports what the backend needs and touches no
        file system, network or database.  ``opts`` is the backend's option
        group when a configuration is at hand, for needs that depend on it
        (a database driver for the configured URL); None otherwise.  Only
        ``stowkit backends`` asks (commands do not pay for the imports).

        :returns: the reason, one line, or None when the backend can work.
            Never raises: a failing check is reported by the registry as the
            reason.
        """
        for module in cls.client_modules:
            reason = import_failure(module)
            if reason is not None:
                return reason
        return None

    @property
    def opts(self) -> cfg.ConfigOpts.GroupAttr:
        """This backend's own option group."""
        return self.conf[self.group]

    def supports(self, capability: str) -> bool:
        """Whether this backend declares ``capability`` (a member of its capability enum)."""
        return capability in self.capabilities

    def require(self, capability: str) -> None:
        """Refuse, in the user's words, a feature this backend lacks.

        :raises InvalidArgument: ``capability`` is not in :attr:`capabilities`.
        """
        if capability not in self.capabilities:
            raise InvalidArgument(
                f"the {self.group} backend does not support {capability.replace('_', ' ')}"
            )

    def close(self) -> None:  # noqa: B027 - optional hook, most drivers hold nothing
        """Release connections, pools or background work; called once, when done.

        The default holds nothing.  Must not raise for a backend never used.
        """
