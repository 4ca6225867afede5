"""How a command reaches the backup catalog: as ``stowkit agent`` does, Keystone included.

``[agent] auth_strategy`` decides (``auto``: Keystone when any credential
source is set: ``--os-cloud``, ``[agent]`` auth options, ``OS_*``).  With
Keystone the project is the token's and the catalog's URL the Keystone
catalog's ``backup`` endpoint unless ``catalog_url`` is set; without it, the
``[agent]`` project and no-auth user (:func:`stowkit.corelib.catalogdocs.connect`).
The agent, ``volume pull`` and the catalog schedule store all go through here,
so they act as the same client of the same catalog.

It lives in ``cli/`` because it logs in through ``stowkit.plugins.openstack_auth``,
which the core library may not import.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from oslo_config import cfg

from stowkit.corelib import catalogdocs
from stowkit.corelib.agent import options
from stowkit.corelib.agent.client import HttpCatalog
from stowkit.corelib.errors import BackendUnavailable, ConfigError, InvalidArgument, StowkitError

LOG = logging.getLogger(__name__)

#: the Keystone service type of the catalog (freezer's; `stowkit catalog register`)
SERVICE_TYPE = "backup"


def keystone_error(exc: BaseException, what: str) -> StowkitError:
    """A keystoneauth1 failure as stowkit's error: refused credentials are configuration."""
    from keystoneauth1 import exceptions as ks_exc

    text = " ".join(str(exc).split())[:300] or type(exc).__name__
    if isinstance(exc, ks_exc.EndpointNotFound):
        return ConfigError(
            f"no '{SERVICE_TYPE}' endpoint in the Keystone catalog ({text}): set "
            "[agent] catalog_url or run `stowkit catalog register`"
        )
    if isinstance(exc, (ks_exc.Unauthorized, ks_exc.Forbidden, ks_exc.BadRequest)):
        return ConfigError(f"Keystone refused {what}: {text}")
    return BackendUnavailable(f"Keystone: {what}: {text}")


def token_headers(session: Any, what: str) -> Callable[[], dict[str, str]]:
    """Per request, the session's token (keystoneauth1 renews it before it expires)."""

    def headers() -> dict[str, str]:
        from keystoneauth1 import exceptions as ks_exc

        try:
            return {"X-Auth-Token": session.get_token()}
        except ks_exc.ClientException as exc:
            raise keystone_error(exc, what) from None

    return headers


def keystone_wanted(conf: cfg.ConfigOpts, environment: bool = True) -> bool:
    """``[agent] auth_strategy``: auto is keystone when any credential source is set
    (``OS_*`` in the environment counts unless ``environment`` is false)."""
    options.register_opts(conf)
    strategy = conf[options.GROUP].auth_strategy
    if strategy != "auto":
        return strategy == "keystone"
    from stowkit.plugins import openstack_auth

    conf.register_opts(openstack_auth.AuthOptions.shared(), group=options.GROUP)
    opts = conf[options.GROUP]
    return bool(
        getattr(conf, openstack_auth.CLI_CLOUD, None)
        or opts.cloud
        or opts.auth_type
        or opts.auth_url
        or opts.auth_section
        or (environment and openstack_auth.environment_configured())
    )


def configured_url(conf: cfg.ConfigOpts, given: str | None) -> str | None:
    """The catalog URL the command line or the configuration sets (None: only the default).

    With Keystone the default gives way to the Keystone catalog's endpoint.
    """
    if given is not None:
        return given
    if conf.get_location("catalog_url", options.GROUP).location != cfg.Locations.opt_default:
        return conf[options.GROUP].catalog_url
    return None


def keystone_catalog(
    conf: cfg.ConfigOpts, url: str | None, kind: type[HttpCatalog] = HttpCatalog
) -> tuple[HttpCatalog, Any, str]:
    """(catalog, keystoneauth1 session, URL) of a client logging in to Keystone."""
    from keystoneauth1 import exceptions as ks_exc

    from stowkit.plugins import openstack_auth

    login = openstack_auth.login(conf, options.GROUP, service_type=SERVICE_TYPE)
    opts = conf[options.GROUP]
    session = login.session
    what = f"the agent's credentials ({login.source})"
    try:
        project = session.get_project_id()
        if not project:
            raise ConfigError(
                f"{login.source}: the token is not scoped to a project (set project_name "
                "or project_id)"
            )
        if url is None:
            url = session.get_endpoint(
                service_type=SERVICE_TYPE,
                interface=login.interface or opts.interface,
                region_name=login.region_name or opts.region_name,
            )
            if not url:
                raise ks_exc.EndpointNotFound(f"service type {SERVICE_TYPE}")
    except ks_exc.ClientException as exc:
        raise keystone_error(exc, what) from None
    catalog = kind(url, project, token_headers(session, what), all_projects=opts.central)
    return catalog, session, url


def reach(
    conf: cfg.ConfigOpts, url: str | None = None, project: str | None = None
) -> catalogdocs.Reach:
    """The catalog as this host's agent reaches it, for a command (``volume pull``, schedules)."""
    if not keystone_wanted(conf):
        return catalogdocs.connect(conf, url, project)
    if project:
        raise InvalidArgument("--project: with Keystone the project is the token's")
    catalog, _, url = keystone_catalog(conf, configured_url(conf, url), catalogdocs.CommandCatalog)
    hostname, client_id = catalogdocs.identity(conf, catalog.project)
    assert isinstance(catalog, catalogdocs.CommandCatalog)
    return catalogdocs.Reach(catalog, url, catalog.project, hostname, client_id)


def configured(conf: cfg.ConfigOpts) -> bool:
    """Whether this host is set up as a catalog client: ``catalog_url`` or Keystone
    credentials in its configuration (or ``--os-cloud``).

    ``OS_*`` alone does not count: an operator's openrc, sourced for Glance, must not
    make every ``snapshot delete`` look for a catalog.
    """
    options.register_opts(conf)
    return configured_url(conf, None) is not None or keystone_wanted(conf, environment=False)


def forget_deleted_snapshots(conf: cfg.ConfigOpts, volume: str, snapshots: list[str]) -> str | None:
    """After a command deleted ``snapshots``: remove their records of this host, if any.

    As the agent's purge does (:func:`stowkit.corelib.catalogdocs.forget_snapshots`),
    so ``volume pull`` and ``freezer backup-list`` do not offer what is gone.  Only on a
    host set up as a catalog client (:func:`configured`).  The deletion stands either way:
    a catalog that cannot be reached is a line for the operator, not a failure.
    Returns that line, or None.
    """
    if not snapshots or not configured(conf):
        return None
    try:
        where = reach(conf)
        removed = catalogdocs.forget_snapshots(
            where.catalog.search_backups,
            where.catalog.delete_backup,
            where.hostname,
            volume,
            snapshots,
        )
    except StowkitError as err:
        return f"the catalog still records the deleted snapshot(s): {err}"
    LOG.info("%d catalog record(s) of deleted snapshots removed", removed)
    return None
