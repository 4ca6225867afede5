"""Keystone credentials of every OpenStack backend, built in one place.

The Glance image store, the Swift block store (Keystone mode) and the image
sync targets all log in through :func:`login`.  The catalog's clients (the
agent, ``volume pull``, the schedule store), its trusts and ``stowkit catalog
register`` reach Keystone here too, through the registry
(:func:`stowkit.corelib.registry.keystone`, which loads :class:`Keystone`).
It lives in ``plugins/`` because it imports keystoneauth1 and openstacksdk,
the backends' client libraries, which ``corelib`` and ``cli`` must never
import (tests/unit/test_layers.py); both are imported on first use, so
loading a backend class costs neither.

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

import argparse
import dataclasses
import functools
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from oslo_config import cfg

from stowkit.corelib.errors import (
    BackendUnavailable,
    ConfigError,
    InvalidArgument,
    NotFound,
    StowkitError,
)

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


class LazyLogin:
    """A backend's Keystone login, made on first use and then kept (thread-safe).

    The Glance store and the Swift connections log in only when they first
    speak to their service; until then :attr:`made` is None.
    """

    def __init__(self, make: Callable[[], Login]) -> None:
        #: :func:`login` with the backend's arguments (a ``functools.partial``)
        self._make = make
        self._lock = threading.Lock()
        self.made: Login | None = None

    def __call__(self) -> Login:
        with self._lock:
            if self.made is None:
                self.made = self._make()
            return self.made

    def where(self, fallback: str | None) -> str:
        """Where it logs in, for messages: known once logged in, else ``fallback``."""
        return (self.made.where if self.made is not None else fallback) or "keystone"

    def forget(self) -> Login | None:
        """Log in again on next use; the login there was, if any (to close its session)."""
        with self._lock:
            made, self.made = self.made, None
            return made


# -- what corelib and cli ask of Keystone, through the registry ---------------------------


def credentials_configured(conf: cfg.ConfigOpts, group: str, environment: bool = True) -> bool:
    """Whether any credential source is set for ``[group]`` (see the module doc).

    ``OS_CLOUD``/``OS_AUTH_URL`` in the environment count unless ``environment``
    is false.
    """
    conf.register_opts(AuthOptions.shared(), group=group)
    opts = conf[group]
    return bool(
        getattr(conf, CLI_CLOUD, None)
        or opts.cloud
        or opts.auth_type
        or opts.auth_url
        or opts.auth_section
        or (environment and environment_configured())
    )


def _keystone_error(exc: BaseException, what: str) -> StowkitError:
    """A keystoneauth1 failure as stowkit's error: refused credentials are configuration."""
    from keystoneauth1 import exceptions as ks_exc

    text = " ".join(str(exc).split())[:300] or type(exc).__name__
    if isinstance(exc, ks_exc.EndpointNotFound):
        return NotFound(text)
    if isinstance(exc, (ks_exc.Unauthorized, ks_exc.Forbidden, ks_exc.BadRequest)):
        return ConfigError(f"Keystone refused {what}: {text}")
    return BackendUnavailable(f"Keystone: {what}: {text}")


def _token_headers(get_session: Callable[[], Any], what: str) -> Callable[[], dict[str, str]]:
    """Per request, the session's token (keystoneauth1 renews it before it expires)."""

    def headers() -> dict[str, str]:
        from keystoneauth1 import exceptions as ks_exc

        try:
            return {"X-Auth-Token": get_session().get_token()}
        except ks_exc.ClientException as exc:
            raise _keystone_error(exc, what) from None

    return headers


class ServiceLogin:
    """A client's Keystone login to a service of the Keystone catalog (the backup catalog).

    :attr:`project` is the token's; :meth:`endpoint` looks the service up in the
    Keystone catalog; :attr:`headers` gives the token per request; :meth:`trust_headers`
    the token of a trust, exchanged from this login's own token (a central agent
    running the jobs of other projects).
    """

    def __init__(self, made: Login, service_type: str, who: str) -> None:
        self.login = made
        self.service_type = service_type
        self.what = f"{who} ({made.source})"
        self.interface = made.interface
        self.region_name = made.region_name
        self.headers = _token_headers(lambda: made.session, self.what)
        self._trusts: dict[str, tuple[str, Any]] = {}
        self._lock = threading.Lock()

    @functools.cached_property
    def project(self) -> str:
        """The token's project (the first use logs in)."""
        from keystoneauth1 import exceptions as ks_exc

        try:
            project = self.login.session.get_project_id()
        except ks_exc.ClientException as exc:
            raise _keystone_error(exc, self.what) from None
        if not project:
            raise ConfigError(
                f"{self.login.source}: the token is not scoped to a project (set project_name "
                "or project_id)"
            )
        return str(project)

    def endpoint(self, interface: str, region_name: str | None) -> str:
        """The service's URL in the Keystone catalog (the login's own interface and
        region first); NotFound when the catalog has none."""
        from keystoneauth1 import exceptions as ks_exc

        try:
            url = self.login.session.get_endpoint(
                service_type=self.service_type,
                interface=self.interface or interface,
                region_name=self.region_name or region_name,
            )
            if not url:
                raise ks_exc.EndpointNotFound(f"service type {self.service_type}")
        except ks_exc.ClientException as exc:
            raise _keystone_error(exc, self.what) from None
        return str(url)

    def _trust_session(self, trust_id: str) -> Any:
        """One session per trust, made again when this login's own token changed.

        Keystone's documented way to consume a trust: the trustee authenticates
        with the token method and the ``OS-TRUST:trust`` scope; the token it gets
        is scoped to the trustor's project with the delegated roles.
        """
        from keystoneauth1 import exceptions as ks_exc
        from keystoneauth1.identity import v3

        own = self.login.session
        try:
            token = own.get_token()
        except ks_exc.ClientException as exc:
            raise _keystone_error(exc, "the agent's credentials") from None
        with self._lock:
            made = self._trusts.get(trust_id)
            if made is None or made[0] != token:
                auth_url = getattr(own.auth, "auth_url", None)
                if not auth_url:
                    raise ConfigError("[agent] central: the agent's credentials name no auth_url")
                auth = v3.Token(auth_url=auth_url, token=token, trust_id=trust_id)
                made = (token, _session(auth, own.verify, None))
                self._trusts[trust_id] = made
            return made[1]

    def trust_headers(self, trust_id: str, what: str) -> Callable[[], dict[str, str]]:
        """Per request, a token scoped by ``trust_id`` (exchanged on first use)."""
        return _token_headers(lambda: self._trust_session(trust_id), what)


def service_login(conf: cfg.ConfigOpts, group: str, *, service_type: str, who: str) -> ServiceLogin:
    """:func:`login` for ``[group]``, a client of ``service_type`` (``who`` names it in errors)."""
    return ServiceLogin(login(conf, group, service_type=service_type), service_type, who)


class Trustee:
    """The Keystone calls of a catalog making trusts for its central clients' jobs.

    The service user (trustee) logs in from the ``section`` group with
    keystoneauth1's loading API; trusts are listed, created and deleted with the
    trustor's own token over Keystone's REST API (no keystoneclient).  Failures
    are stowkit's errors: NotFound, InvalidArgument (Keystone refused),
    BackendUnavailable.
    """

    def __init__(self, conf: cfg.ConfigOpts, section: str, where: str) -> None:
        self.conf = conf
        self.section = section
        #: the option naming ``section``, for messages
        self.where = where
        self._made: Any = None
        self._lock = threading.Lock()

    def _service(self) -> Any:
        from keystoneauth1 import loading
        from keystoneauth1 import session as ks_session

        with self._lock:
            if self._made is None:
                loading.register_auth_conf_options(self.conf, self.section)
                try:
                    plugin = loading.load_auth_from_conf_options(self.conf, self.section)
                except Exception as exc:  # keystoneauth's MissingRequiredOptions and friends
                    raise ConfigError(
                        f"{self.where}: cannot load the service credentials: {exc}"
                    ) from None
                if plugin is None:
                    raise ConfigError(f"{self.where} names no credentials")
                self._made = ks_session.Session(auth=plugin)
            return self._made

    def _call(self, what: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from keystoneauth1 import exceptions as ks

        try:
            return func(*args, **kwargs)
        except ks.NotFound as exc:
            raise NotFound(f"Keystone: cannot {what}: {exc.message}") from None
        except ks.http.HttpError as exc:
            if 400 <= exc.http_status < 500:
                raise InvalidArgument(f"Keystone refused to {what}: {exc.message}") from None
            raise BackendUnavailable(f"Keystone failed to {what}: {exc.message}") from None
        except ks.ClientException as exc:  # unreachable, timeouts
            raise BackendUnavailable(f"cannot reach Keystone to {what}: {exc}") from None

    def _as_user(self, token: str, project: str) -> tuple[Any, str]:
        """A session with the trustor's own token scoped to ``project``, and the trusts' URL."""
        from keystoneauth1 import session as ks_session
        from keystoneauth1.identity import v3

        service = self._service()
        user = ks_session.Session(auth=v3.Token(service.auth.auth_url, token, project_id=project))
        base = self._call(
            "find the identity endpoint",
            service.get_endpoint,
            service_type="identity",
            interface="public",
        )
        return user, f"{base.rstrip('/')}/OS-TRUST/trusts"

    def trustee_id(self) -> str:
        """The service user's id."""
        return str(self._call("learn the service user", self._service().get_user_id))

    def find(self, token: str, project: str, trustor: str, trustee: str) -> list[dict[str, Any]]:
        """The trusts from ``trustor`` to ``trustee`` (listed with the trustor's token)."""
        user, url = self._as_user(token, project)
        params = {"trustor_user_id": trustor, "trustee_user_id": trustee}
        return list(self._call("list trusts", user.get, url, params=params).json()["trusts"])

    def create(self, token: str, project: str, trust: dict[str, Any]) -> dict[str, Any]:
        """POST ``trust`` with the trustor's token; Keystone's trust document."""
        user, url = self._as_user(token, project)
        made = self._call("create a trust", user.post, url, json={"trust": trust})
        return dict(made.json()["trust"])

    def delete(self, token: str, project: str, trust_id: str) -> None:
        """Delete a trust (NotFound when it is gone already)."""
        user, url = self._as_user(token, project)
        self._call("delete a trust", user.delete, f"{url}/{trust_id}")


class IdentityAdmin:
    """Keystone v3 REST calls of a cloud admin (``stowkit catalog register``).

    A failure is ``error`` (the command's own error class); missing
    credentials a ConfigError.
    """

    def __init__(self, session: Any, error: type[StowkitError] = StowkitError) -> None:
        self.session = session
        self.error = error

    def call(self, method: str, path: str, body: Any = None) -> Any:
        from keystoneauth1 import exceptions

        try:
            resp = self.session.request(
                path,
                method,
                json=body,
                endpoint_filter={
                    "service_type": "identity",
                    "interface": "public",
                    "version": (3, 0),
                },
                raise_exc=True,
            )
        except exceptions.MissingRequiredOptions as exc:
            raise ConfigError(f"Keystone credentials incomplete: {exc}") from None
        except exceptions.ClientException as exc:
            raise self.error(f"Keystone {method} {path}: {exc}") from None
        return resp.json() if resp.content else None


def add_admin_arguments(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """keystoneauth1's own ``--os-*`` options (session and auth; ``OS_*`` defaults)."""
    from keystoneauth1 import loading

    loading.register_session_argparse_arguments(parser)
    loading.register_auth_argparse_arguments(parser, list(argv), default="password")


def admin_from_arguments(
    parsed_args: argparse.Namespace, error: type[StowkitError] = StowkitError
) -> IdentityAdmin:
    """The admin's session from :func:`add_admin_arguments`' options."""
    from keystoneauth1 import exceptions, loading

    try:
        auth = loading.load_auth_from_argparse_arguments(parsed_args)
    except (exceptions.MissingRequiredOptions, exceptions.NoMatchingPlugin) as exc:
        raise ConfigError(
            f"Keystone credentials incomplete ({exc}): give --os-auth-url, "
            "--os-username... or the OS_* variables of a cloud admin"
        ) from None
    session = loading.load_session_from_argparse_arguments(parsed_args, auth=auth)
    return IdentityAdmin(session, error)


class Keystone:
    """The one Keystone owner as corelib and cli reach it: the ``stowkit.keystone`` entry
    point ``keystone`` (:func:`stowkit.corelib.registry.keystone`), so they import no
    client library.  Its contract is :class:`stowkit.corelib.keystone.Keystone`."""

    def auth_options(self) -> list[cfg.Opt]:
        return list(AuthOptions.shared())

    credentials_configured = staticmethod(credentials_configured)
    service_login = staticmethod(service_login)

    def trustee(self, conf: cfg.ConfigOpts, section: str, where: str) -> Trustee:
        return Trustee(conf, section, where)

    def identity_admin(
        self, session: Any, error: type[StowkitError] = StowkitError
    ) -> IdentityAdmin:
        return IdentityAdmin(session, error)

    add_admin_arguments = staticmethod(add_admin_arguments)
    admin_from_arguments = staticmethod(admin_from_arguments)
