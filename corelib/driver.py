"""The base every backend derives from.

A backend is a class registered under one of the ``stowkit.NAMESPACE``
entry-point namespaces.  It declares the oslo.config options it needs (they
are registered in its own group, ``NAMESPACE_NAME``, e.g. ``[volume_btrfs]``)
and the capabilities it offers, so front ends can ask before they promise a
feature rather than fail half-way.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import ClassVar

from oslo_config import cfg

from stowkit.corelib.errors import InvalidArgument


class Driver(abc.ABC):  # noqa: B024 - the interfaces add the abstract methods
    #: The oslo.config options of this backend, registered under ``group``.
    options: ClassVar[Sequence[cfg.Opt]] = ()
    #: What this backend can do; the interface module lists the known names.
    capabilities: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, conf: cfg.ConfigOpts, group: str) -> None:
        # The registry has registered ``options`` under ``group`` already;
        # registering again is harmless and lets tests build drivers directly.
        conf.register_opts(self.options, group=group)
        self.conf = conf
        self.group = group

    @property
    def opts(self) -> cfg.ConfigOpts.GroupAttr:
        """This backend's own option group."""
        return self.conf[self.group]

    def supports(self, capability: str) -> bool:
        return capability in self.capabilities

    def require(self, capability: str) -> None:
        """Raise a user-facing error when this backend lacks ``capability``."""
        if capability not in self.capabilities:
            raise InvalidArgument(
                f"the {self.group} backend does not support {capability.replace('_', ' ')}"
            )

    def close(self) -> None:  # noqa: B027 - optional hook, most drivers hold nothing
        """Release connections or background work; called by long-running front ends."""
