"""Swift connections: Keystone v3 through keystoneauth1, or tempauth v1.

One swiftclient Connection per thread (a Connection holds one HTTP
keep-alive session and is not thread-safe); all of them share one
credential: a keystoneauth1 Session for Keystone, or the first tempauth
token for v1, so N threads cost one authentication, not N.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from oslo_config import cfg
from swiftclient import client as swift_client
from swiftclient.exceptions import ClientException

from stowkit.corelib.errors import BackendUnavailable, ConfigError
from stowkit.plugins import openstack_auth

#: Swift's own options; ``auth_url`` (a Keystone URL, or tempauth's
#: http://host:8080/auth/v1.0), ``cloud`` and keystoneauth1's auth options come
#: from ``stowkit.plugins.openstack_auth.AuthOptions`` (see store.py).
OPTIONS = [
    cfg.StrOpt(
        "auth_version",
        default="auto",
        choices=["auto", "1", "3"],
        help="'1' for tempauth/swauth (auth_url, user, key), '3' for Keystone (keystoneauth1 "
        "options: auth_type, auth_url, ...; or cloud, or OS_CLOUD / OS_*); 'auto' picks 1 "
        "when auth_url ends in /v1.0.",
    ),
    cfg.StrOpt("user", help="tempauth v1 user, as ACCOUNT:USER (e.g. test:tester)."),
    cfg.StrOpt("key", secret=True, help="tempauth v1 key."),
    cfg.StrOpt(
        "region_name",
        help="Region of the object-store endpoint (Keystone only; default: the clouds.yaml "
        "entry's or OS_REGION_NAME when those give the credentials).",
    ),
    cfg.StrOpt(
        "interface",
        default="public",
        choices=["public", "internal", "admin"],
        help="Which object-store endpoint of the Keystone catalog to use.",
    ),
    cfg.StrOpt(
        "storage_url",
        help="Use this storage URL instead of the one the identity service returns "
        "(tempauth only).",
    ),
    cfg.StrOpt("cacert", help="CA bundle to verify HTTPS endpoints."),
    cfg.BoolOpt("insecure", default=False, help="Do not verify HTTPS certificates."),
    cfg.FloatOpt(
        "timeout",
        default=30.0,
        min=1.0,
        help="Seconds to wait for Swift to connect or answer before retrying.",
    ),
    cfg.IntOpt(
        "retries",
        default=5,
        min=0,
        help="Retries (with exponential backoff) on 5xx answers, timeouts and connection errors.",
    ),
    cfg.FloatOpt("max_backoff", default=16.0, min=0.1, help="Longest wait between retries."),
    cfg.IntOpt(
        "threads",
        default=16,
        min=1,
        max=256,
        help="Parallel requests for listing, deleting and copying whole devices.",
    ),
]


def auth_version(opts: Any) -> str:
    if opts.auth_version != "auto":
        return opts.auth_version
    url = (opts.auth_url or "").rstrip("/")
    return "1" if url.endswith(("/v1.0", "/v1")) or "/auth/" in url + "/" else "3"


def _verify(insecure: bool, cacert: str | None) -> bool | str:
    return False if insecure else (cacert or True)


def describe_error(exc: BaseException) -> str:
    """One line for a swiftclient/keystoneauth/socket failure."""
    if isinstance(exc, ClientException):
        status = f"HTTP {exc.http_status}" if exc.http_status else "error"
        reason = exc.http_reason or exc.msg or ""
        where = f" on {exc.http_path}" if exc.http_path else ""
        return f"{status} {reason}{where}".strip()
    return f"{type(exc).__name__}: {exc}"


class _Connection(swift_client.Connection):
    """A swiftclient Connection that reads the environment once per HTTP connection.

    requests looks up proxies, ``~/.netrc`` and CA-bundle variables on every
    request (``trust_env``): about 1.4 ms of stat() calls and proxy-bypass
    checks per request, which an NBD server's thousands of object requests
    pay on the Swift path.  The same settings, resolved when the HTTP
    connection is made, are passed with each request instead; netrc is not
    used (swiftclient authenticates with its own token).
    """

    def http_connection(self, url: str | None = None) -> Any:
        parsed, conn = super().http_connection(url)
        session = conn.request_session
        if session.trust_env:
            settings = session.merge_environment_settings(
                conn.url, {}, None, conn.requests_args.get("verify", True), None
            )
            conn.requests_args["proxies"] = settings["proxies"]
            conn.requests_args["verify"] = settings["verify"]
            session.trust_env = False
        return parsed, conn


class ConnectionFactory:
    """Thread-local swiftclient Connections built from the [blockstore_swift] options.

    ``conf`` and ``group`` are where a Keystone login reads its credentials.
    """

    def __init__(self, opts: Any, conf: Any, group: str = "blockstore_swift") -> None:
        self.opts = opts
        self.conf = conf
        self.group = group
        self.version = auth_version(opts)
        if self.version == "1" and not (opts.auth_url and opts.user and opts.key):
            raise ConfigError(f"[{group}] tempauth needs auth_url, user and key")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[swift_client.Connection] = []
        self._login = openstack_auth.LazyLogin(
            functools.partial(
                openstack_auth.login,
                conf,
                group,
                service_type="object-store",
                timeout=opts.timeout,
                insecure=opts.insecure,
                cacert=opts.cacert,
            )
        )
        self._preauth: tuple[str, str] | None = None

    def login(self) -> Any:
        """The Keystone login (stowkit.plugins.openstack_auth), made once."""
        return self._login()

    @property
    def where(self) -> str:
        return self._login.where(self.opts.auth_url)

    def _common(self) -> dict[str, Any]:
        verify: Any = _verify(self.opts.insecure, self.opts.cacert)
        if self._login.made is not None:
            verify = self._login.made.verify
        return {
            "retries": self.opts.retries,
            "starting_backoff": 0.5,
            "max_backoff": self.opts.max_backoff,
            "timeout": self.opts.timeout,
            "cacert": verify if isinstance(verify, str) else None,
            "insecure": verify is False,
        }

    def _new(self) -> swift_client.Connection:
        if self.version != "1":
            login = self.login()
            return _Connection(
                session=login.session,
                os_options={
                    "service_type": "object-store",
                    "endpoint_type": login.interface or self.opts.interface,
                    "region_name": self.opts.region_name or login.region_name,
                },
                **self._common(),
            )
        os_options = {}
        if self.opts.storage_url:
            os_options["object_storage_url"] = self.opts.storage_url
        conn = _Connection(
            authurl=self.opts.auth_url,
            user=self.opts.user,
            key=self.opts.key,
            auth_version="1",
            os_options=os_options,
            **self._common(),
        )
        # Share the first token: later connections start authenticated (and
        # re-authenticate by themselves on a 401).
        with self._lock:
            preauth = self._preauth
        if preauth is None:
            url, token = conn.get_auth()
            url = self.opts.storage_url or url
            with self._lock:
                self._preauth = (url, token)
            conn.url, conn.token = url, token
        else:
            conn.url, conn.token = preauth
        return conn

    def get(self) -> swift_client.Connection:
        """This thread's connection, created (and authenticated) on first use."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = self._new()
            except ClientException as exc:
                raise BackendUnavailable(
                    f"swift authentication failed at {self.where}: {describe_error(exc)}"
                ) from None
            except Exception as exc:
                if is_transport_error(exc):
                    raise BackendUnavailable(
                        f"swift: cannot reach {self.where}: {describe_error(exc)}"
                    ) from None
                raise
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except Exception:
                pass
        self._local = threading.local()


def is_transport_error(exc: BaseException) -> bool:
    import requests
    from keystoneauth1 import exceptions as ks_exc

    return isinstance(exc, OSError | requests.RequestException | ks_exc.ClientException)
