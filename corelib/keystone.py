"""What corelib and cli ask of Keystone: the contract of its one owner.

``stowkit.plugins.openstack_auth`` is that owner (it imports keystoneauth1 and
openstacksdk); it is reached through :func:`stowkit.corelib.registry.keystone`
(the ``stowkit.keystone`` entry point ``keystone``), so the core library and
the commands import no client library.  Failures are stowkit's errors:
ConfigError for refused or missing credentials, BackendUnavailable for an
unreachable Keystone, NotFound for what Keystone does not have.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from oslo_config import cfg

from stowkit.corelib.errors import StowkitError

Headers = Callable[[], dict[str, str]]


class ServiceLogin(Protocol):
    """A client's login, for one service type of the Keystone catalog."""

    #: the token's project
    project: str
    #: a fresh ``X-Auth-Token`` per request (renewed before it expires)
    headers: Headers

    def endpoint(self, interface: str, region_name: str | None) -> str:
        """The service's URL in the Keystone catalog; NotFound when none."""
        ...

    def trust_headers(self, trust_id: str, what: str) -> Headers:
        """Per request, a token scoped by the trust (``what`` names it in errors)."""
        ...


class Trustee(Protocol):
    """A service user receiving trusts, and the trustors' calls about them."""

    def trustee_id(self) -> str: ...

    def find(
        self, token: str, project: str, trustor: str, trustee: str
    ) -> list[dict[str, Any]]: ...

    def create(self, token: str, project: str, trust: dict[str, Any]) -> dict[str, Any]: ...

    def delete(self, token: str, project: str, trust_id: str) -> None:
        """NotFound when the trust is gone already."""
        ...


class IdentityAdmin(Protocol):
    def call(self, method: str, path: str, body: Any = None) -> Any:
        """One Keystone v3 REST call (``/services``, ``/endpoints`` ...); its JSON answer."""
        ...


class Keystone(Protocol):
    """The owner's face (:class:`stowkit.plugins.openstack_auth.Keystone`)."""

    def auth_options(self) -> list[cfg.Opt]:
        """``cloud`` and keystoneauth1's auth options, as a client's group carries them."""
        ...

    def credentials_configured(
        self, conf: cfg.ConfigOpts, group: str, environment: bool = True
    ) -> bool:
        """Whether ``[group]``, ``--os-cloud`` (or, with ``environment``, ``OS_*``) give any."""
        ...

    def service_login(
        self, conf: cfg.ConfigOpts, group: str, *, service_type: str, who: str
    ) -> ServiceLogin:
        """Log in with ``[group]``'s credentials (``who`` names them in errors)."""
        ...

    def trustee(self, conf: cfg.ConfigOpts, section: str, where: str) -> Trustee:
        """The trustee logging in from ``[section]`` (``where`` names the option in errors)."""
        ...

    def identity_admin(
        self, session: Any, error: type[StowkitError] = StowkitError
    ) -> IdentityAdmin:
        """REST calls on a keystoneauth1-like session; a refusal is ``error``."""
        ...

    def add_admin_arguments(self, parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
        """Keystone's own ``--os-*`` command-line options."""
        ...

    def admin_from_arguments(
        self, parsed_args: argparse.Namespace, error: type[StowkitError] = StowkitError
    ) -> IdentityAdmin:
        """The admin calls with the credentials :meth:`add_admin_arguments` parsed."""
        ...
