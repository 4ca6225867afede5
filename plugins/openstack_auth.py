"""Keystone credentials of every OpenStack backend, built in one place.

The Glance image store, the Swift block store (Keystone mode) and the image
sync targets all log in through :func:`login`.  It lives in ``plugins/``
because it imports keystoneauth1 and openstacksdk, the backends' client
libraries, which ``corelib`` must never import (doc/architecture.md); both
are imported on first use, so loading a backend class costs neither.

Where the credentials come from, first match wins:

1. explicit :class:`~stowkit.corelib.image.Credentials` (a GlanceSync target):
   a password, a clouds.yaml ``cloud``, or the OS_* environment;
   then ``[DEFAULT] os_cloud`` when the command line registered it (``--os-cloud``);
2. ``[GROUP] cloud``: that entry of clouds.yaml (+ secure.yaml), read by
   openstacksdk's config loader;
3. ``[GROUP] auth_type`` or ``auth_url``: keystoneauth1's conf loading from the
   group (``auth_type`` defaults to ``password``; ``auth_section`` works);
4. ``OS_CLOUD`` or ``OS_AUTH_URL`` in the environment: openstacksdk's loader
   again (``OS_CLOUD``'s entry, else the ``OS_*`` variables);
5. nothing: a ConfigError naming the group.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from oslo_config import cfg

from stowkit.corelib.errors import ConfigError

CLOUD_HELP = (
    "Take the credentials (and region_name, interface, verify, cacert) from this "
    "clouds.yaml entry (secure.yaml merged), read by openstacksdk's config loader. "
    "Without it and without auth_type/auth_url here, OS_CLOUD or the OS_* variables "
    "of the environment are used."
)
#: the user and project domain of a password login that names neither
DEFAULT_DOMAIN = "Default"
#: what keystoneauth1 accepts as missing but Keystone would refuse: per
#: auth_type, groups of options of which one must be set
NEEDS = {
    "password": (("username", "user_id"), ("password",)),
    "v3password": (("username", "user_id"), ("password",)),
    "v3applicationcredential": (
        ("application_credential_id", "application_credential_name"),
        ("application_credential_secret",),
    ),
    "token": (("token",),),
    "v3token": (("token",),),
}
#: ``[DEFAULT] os_cloud`` (a core option; the command line's ``--os-cloud``
#: sets it): the one source above the group's own settings
CLI_CLOUD = "os_cloud"
#: the environment variables that make the OS_* environment a credential source
ENV_MARKERS = ("OS_CLOUD", "OS_AUTH_URL")


class AuthOptions(Sequence[cfg.Opt]):
    """``cloud``, keystoneauth1's common auth options and its password options,
    then ``extra``: computed on first use, so defining a backend class does not
    import keystoneauth1.  The same Opt objects are returned every time (a
    second registration of equal options is a no-op for oslo.config)."""

    _shared: list[cfg.Opt] | None = None
    _lock = threading.Lock()

    def __init__(self, extra: Sequence[cfg.Opt] = ()) -> None:
        self._extra = list(extra)

    @classmethod
    def shared(cls) -> list[cfg.Opt]:
        with cls._lock:
            if cls._shared is None:
                from keystoneauth1 import loading

                cls._shared = [
                    cfg.StrOpt("cloud", help=CLOUD_HELP),
                    *loading.get_auth_common_conf_options(),
                    *loading.get_auth_plugin_conf_options("password"),
                ]
            return cls._shared

    def _all(self) -> list[cfg.Opt]:
        return [*self.shared(), *self._extra]

    def __getitem__(self, index: Any) -> Any:
        return self._all()[index]

    def __len__(self) -> int:
        return len(self._all())

    def __iter__(self) -> Iterator[cfg.Opt]:
        return iter(self._all())


@dataclasses.dataclass
class Login:
    """A keystoneauth1 session and what the credential source said about it."""

    session: Any
    #: where it logs in, for messages
    where: str
    #: "[group]", "cloud NAME", "environment" or "target credential"
    source: str
    #: interface / region named by the clouds.yaml entry or OS_*; None otherwise
    interface: str | None = None
    region_name: str | None = None
    #: requests' verify: True, False or a CA bundle path
    verify: bool | str = True


def environment_configured() -> bool:
    return any(os.environ.get(name) for name in ENV_MARKERS)


def v3_url(url: str) -> str:
    """GlanceSync configurations carry Keystone v2.0 URLs: use them as v3."""
    url = url.rstrip("/")
    return url[: -len("/v2.0")] + "/v3" if url.endswith("/v2.0") else url


def _verify(insecure: bool, cacert: str | None) -> bool | str:
    if insecure:
        return False
    return cacert or True


def _session(auth: Any, verify: bool | str, timeout: float | None, cert: Any = None) -> Any:
    from keystoneauth1 import session as ks_session

    return ks_session.Session(auth=auth, verify=verify, cert=cert, timeout=timeout)


def _auth_error(exc: BaseException, where: str) -> ConfigError:
    text = " ".join(str(exc).split())[:300] or type(exc).__name__
    return ConfigError(f"{where}: cannot build Keystone credentials: {text}")


def _from_conf(conf: cfg.ConfigOpts, group: str) -> Any:
    """The auth plugin of ``[group]`` through keystoneauth1's conf loading."""
    from keystoneauth1 import exceptions as ks_exc
    from keystoneauth1 import loading

    loading.register_auth_conf_options(conf, group)
    section = conf[group].auth_section or group
    name = conf[section].auth_type or "password"
    try:
        plugin_opts = loading.get_auth_plugin_conf_options(name)
    except ks_exc.NoMatchingPlugin as exc:
        raise ConfigError(f"[{section}] auth_type: {exc}") from None
    # The group carries the password plugin's options (so the sample shows them
    # and old configurations keep working); another plugin may define an option
    # of the same name a little differently: that name then reads the value
    # already registered.
    for opt in plugin_opts:
        try:
            conf.register_opt(opt, group=section)
        except cfg.DuplicateOptError:
            pass
    values = conf[section]
    kwargs: dict[str, Any] = {}
    names = {opt.dest for opt in plugin_opts}
    if {"default_domain_name", "default_domain_id"} <= names and not any(
        getattr(values, key)
        for key in (
            "default_domain_name",
            "default_domain_id",
            "user_domain_name",
            "user_domain_id",
        )
    ):
        kwargs["default_domain_name"] = DEFAULT_DOMAIN
    missing = [
        "/".join(group)
        for group in NEEDS.get(name, ())
        if not any(getattr(values, key) for key in group)
    ]
    if missing:
        raise ConfigError(
            f"[{section}] credentials incomplete: auth_type {name} needs {', '.join(missing)}"
        )
    loader = loading.get_plugin_loader(name)
    try:
        return loader.load_from_options_getter(lambda opt: values[opt.dest], **kwargs)
    except ks_exc.MissingRequiredOptions as exc:
        missing = ", ".join(o.dest for o in exc.options)
        raise ConfigError(
            f"[{section}] credentials incomplete: auth_type {name} needs {missing}"
        ) from None
    except (ks_exc.ClientException, ValueError, TypeError) as exc:
        raise _auth_error(exc, f"[{section}]") from None


def _from_openstacksdk(
    cloud: str | None, service_type: str, timeout: float | None
) -> tuple[Any, str, str | None, str | None, bool | str]:
    """(session, where, interface, region_name, verify) from clouds.yaml or OS_*."""
    from keystoneauth1 import exceptions as ks_exc

    what = f"cloud {cloud!r}" if cloud else "the OS_* environment"
    try:
        from openstack import config as os_config
        from openstack import exceptions as os_exc
        from openstack import warnings as os_warnings
    except ImportError as exc:
        raise ConfigError(
            f"{what}: reading clouds.yaml and OS_* needs openstacksdk ({exc})"
        ) from None
    try:
        with warnings.catch_warnings():
            # openstacksdk warns about its own deprecated metrics support, which
            # stowkit does not use, on every load
            warnings.simplefilter("ignore", os_warnings.RemovedInSDK60Warning)
            region = os_config.OpenStackConfig().get_one(cloud=cloud)
        auth = region.get_auth()
    except (os_exc.ConfigException, ks_exc.ClientException, KeyError, ValueError) as exc:
        raise _auth_error(exc, what) from None
    if auth is None:
        raise ConfigError(f"{what}: no credentials")
    verify, cert = region.get_requests_verify_args()
    where = (region.config.get("auth") or {}).get("auth_url") or what
    timeout = region.config.get("api_timeout") or timeout
    return (
        _session(auth, verify, timeout, cert),
        where,
        region.get_interface(service_type),
        region.get_region_name(service_type),
        verify,
    )


def _from_credentials(creds: Any) -> Any:
    """A keystoneauth1 password plugin for a GlanceSync target's credential."""
    from keystoneauth1 import exceptions as ks_exc
    from keystoneauth1 import loading

    missing = [k for k in ("user", "password", "auth_url", "project") if not getattr(creds, k)]
    if missing:
        raise ConfigError(f"credentials incomplete: missing {', '.join(missing)}")
    project: dict[str, str] = {"project_name": creds.project}
    if len(creds.project) == 32 and all(c in "0123456789abcdef" for c in creds.project):
        project = {"project_id": creds.project}  # GlanceSync tenants may be ids
    else:
        project["project_domain_name"] = creds.project_domain
    try:
        return loading.get_plugin_loader("password").load_from_options(
            auth_url=v3_url(creds.auth_url),
            username=creds.user,
            password=creds.password,
            user_domain_name=creds.user_domain,
            **project,
        )
    except ks_exc.ClientException as exc:
        raise _auth_error(exc, creds.auth_url) from None


def login(
    conf: cfg.ConfigOpts,
    group: str,
    credentials: Any = None,
    *,
    service_type: str,
    timeout: float | None = None,
    insecure: bool = False,
    cacert: str | None = None,
) -> Login:
    """A Keystone login for ``[group]`` (or for ``credentials``), see the module doc.

    ``insecure``/``cacert``/``timeout`` are the backend's own session settings;
    a clouds.yaml entry or OS_* brings its own ``verify``/``cacert`` instead.
    """
    conf.register_opts(AuthOptions.shared(), group=group)
    opts = conf[group]
    verify = _verify(insecure, cacert)
    cloud = None
    if credentials is not None:
        if getattr(credentials, "environment", False):
            cloud, source = "", "environment"
        elif credentials.cloud:
            cloud, source = credentials.cloud, f"cloud {credentials.cloud}"
        else:
            auth = _from_credentials(credentials)
            url = v3_url(credentials.auth_url)
            return Login(_session(auth, verify, timeout), url, "target credential", verify=verify)
    elif getattr(conf, CLI_CLOUD, None):
        cloud = getattr(conf, CLI_CLOUD)
        source = f"cloud {cloud} (--os-cloud)"
    elif opts.cloud:
        cloud, source = opts.cloud, f"cloud {opts.cloud}"
    elif opts.auth_type or opts.auth_url or opts.auth_section:
        auth = _from_conf(conf, group)
        where = getattr(auth, "auth_url", None) or f"[{group}]"
        return Login(_session(auth, verify, timeout), where, f"[{group}]", verify=verify)
    elif environment_configured():
        cloud, source = "", "environment"
    else:
        raise ConfigError(
            f"no Keystone credentials: set [{group}] auth_type/auth_url (and the "
            f"plugin's options) or cloud, or OS_CLOUD / OS_AUTH_URL in the environment"
        )
    session, where, interface, region, verify = _from_openstacksdk(
        cloud or None, service_type, timeout
    )
    return Login(session, where, source, interface, region, verify)
