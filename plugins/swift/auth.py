"""Swift connections: Keystone v3 through keystoneauth1, or tempauth v1.

One swiftclient Connection per thread (a Connection holds one HTTP
keep-alive session and is not thread-safe); all of them share one
credential: a keystoneauth1 Session for Keystone, or the first tempauth
token for v1, so N threads cost one authentication, not N.
"""

from __future__ import annotations

import threading
from typing import Any

from oslo_config import cfg
from swiftclient import client as swift_client
from swiftclient.exceptions import ClientException

from stowkit.corelib.errors import BackendUnavailable, ConfigError

OPTIONS = [
    cfg.StrOpt(
        "auth_url",
        help="Identity endpoint: a Keystone v3 URL (http://host:5000/v3) or a tempauth "
        "v1 URL (http://host:8080/auth/v1.0).",
    ),
    cfg.StrOpt(
        "auth_version",
        default="auto",
        choices=["auto", "1", "3"],
        help="'1' for tempauth/swauth (user, key), '3' for Keystone v3 (username, "
        "password, project_name, domains); 'auto' picks 1 when auth_url ends in /v1.0.",
    ),
    cfg.StrOpt("user", help="tempauth v1 user, as ACCOUNT:USER (e.g. test:tester)."),
    cfg.StrOpt("key", secret=True, help="tempauth v1 key."),
    cfg.StrOpt("username", help="Keystone v3 user name."),
    cfg.StrOpt("password", secret=True, help="Keystone v3 password."),
    cfg.StrOpt("project_name", help="Keystone v3 project (scope of the token)."),
    cfg.StrOpt("user_domain_name", default="Default", help="Keystone v3 user domain."),
    cfg.StrOpt("project_domain_name", default="Default", help="Keystone v3 project domain."),
    cfg.StrOpt("region_name", help="Region of the object-store endpoint (Keystone only)."),
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


def describe_error(exc: BaseException) -> str:
    """One line for a swiftclient/keystoneauth/socket failure."""
    if isinstance(exc, ClientException):
        status = f"HTTP {exc.http_status}" if exc.http_status else "error"
        reason = exc.http_reason or exc.msg or ""
        where = f" on {exc.http_path}" if exc.http_path else ""
        return f"{status} {reason}{where}".strip()
    return f"{type(exc).__name__}: {exc}"


class ConnectionFactory:
    """Thread-local swiftclient Connections built from the [blockstore_swift] options."""

    def __init__(self, opts: Any) -> None:
        self.opts = opts
        self.version = auth_version(opts)
        if not opts.auth_url:
            raise ConfigError("[blockstore_swift] auth_url is not set")
        if self.version == "1" and not (opts.user and opts.key):
            raise ConfigError("[blockstore_swift] tempauth needs user and key")
        if self.version == "3" and not (opts.username and opts.password and opts.project_name):
            raise ConfigError(
                "[blockstore_swift] Keystone v3 needs username, password and project_name"
            )
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[swift_client.Connection] = []
        self._session: Any = None
        self._preauth: tuple[str, str] | None = None

    def _keystone_session(self) -> Any:
        with self._lock:
            if self._session is None:
                from keystoneauth1 import session as ks_session
                from keystoneauth1.identity import v3

                auth = v3.Password(
                    auth_url=self.opts.auth_url,
                    username=self.opts.username,
                    password=self.opts.password,
                    project_name=self.opts.project_name,
                    user_domain_name=self.opts.user_domain_name,
                    project_domain_name=self.opts.project_domain_name,
                )
                verify: Any = self.opts.cacert or not self.opts.insecure
                self._session = ks_session.Session(
                    auth=auth, verify=verify, timeout=self.opts.timeout
                )
            return self._session

    def _common(self) -> dict[str, Any]:
        return {
            "retries": self.opts.retries,
            "starting_backoff": 0.5,
            "max_backoff": self.opts.max_backoff,
            "timeout": self.opts.timeout,
            "cacert": self.opts.cacert,
            "insecure": self.opts.insecure,
        }

    def _new(self) -> swift_client.Connection:
        if self.version == "3":
            return swift_client.Connection(
                session=self._keystone_session(),
                os_options={
                    "service_type": "object-store",
                    "endpoint_type": self.opts.interface,
                    "region_name": self.opts.region_name,
                },
                **self._common(),
            )
        os_options = {}
        if self.opts.storage_url:
            os_options["object_storage_url"] = self.opts.storage_url
        conn = swift_client.Connection(
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
                    f"swift authentication failed at {self.opts.auth_url}: {describe_error(exc)}"
                ) from None
            except Exception as exc:
                if is_transport_error(exc):
                    raise BackendUnavailable(
                        f"swift: cannot reach {self.opts.auth_url}: {describe_error(exc)}"
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
