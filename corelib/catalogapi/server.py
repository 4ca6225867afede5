"""Building the catalog's WSGI pipeline from configuration, and serving it.

Production: keystonemiddleware's ``auth_token`` in front of the app (options in
``[keystone_authtoken]``), so the project and user come from a validated
token, and oslo.policy rules (``policy``) decide what its roles allow.
``--no-auth``: the app alone, trusting the URL and ``X-User-Id``; meant
for the embedded, single-host default and tests.

The server is cheroot, one process per worker with SO_REUSEPORT: measured here
it served this app faster than gunicorn (sync), waitress and bjoern
(see doc/catalog.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from oslo_config import cfg

from stowkit.corelib import registry, wsgiserve
from stowkit.corelib.catalogapi.app import CatalogApp
from stowkit.corelib.catalogapi.service import CatalogService
from stowkit.corelib.errors import ConfigError

GROUP = "catalog_api"

api_opts = [
    cfg.StrOpt("bind", default="127.0.0.1", help="Address the catalog API listens on."),
    cfg.PortOpt("port", default=9090, help="TCP port of the catalog API (freezer-api's)."),
    cfg.IntOpt(
        "workers",
        default=0,
        min=0,
        help="Server processes; 0 means one per CPU (the app is CPU-bound: processes, "
        "not threads, use several cores under the GIL).",
    ),
    cfg.StrOpt(
        "auth_strategy",
        default="keystone",
        choices=["keystone", "noauth"],
        help="keystone: validate tokens with keystonemiddleware ([keystone_authtoken]); "
        "noauth: trust the URL's project and X-User-Id (single host, tests).",
    ),
    cfg.StrOpt(
        "default_project",
        default="default",
        help="noauth only: the project of v1 requests, which name none.",
    ),
    cfg.IntOpt(
        "max_body_size",
        default=1 << 20,
        min=1024,
        help="Largest request body accepted, in bytes; larger ones get 413.",
    ),
    cfg.IntOpt(
        "threads",
        default=32,
        min=1,
        help="Threads per server process.  An idle keep-alive connection holds none; a "
        "connection in the middle of sending its request holds one, for at most "
        "request_timeout seconds.",
    ),
    cfg.IntOpt(
        "client_timeout",
        default=10,
        min=1,
        help="Seconds a connection may stay silent (between requests or in the middle "
        "of one) before it is closed.",
    ),
    cfg.IntOpt(
        "request_timeout",
        default=20,
        min=1,
        help="Seconds a client has to send a whole request (request line, headers and "
        "body) once it started; a slower one gets 408 or is disconnected.",
    ),
    cfg.BoolOpt(
        "auto_sync",
        default=True,
        help="Apply database migrations when the server starts (as `catalog db-sync`).",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(api_opts, group=GROUP)


def build_app(conf: cfg.ConfigOpts, catalog: Any = None, auth: str | None = None) -> Any:
    """The WSGI callable the configuration describes."""
    register_opts(conf)
    opts = conf[GROUP]
    catalog = catalog or registry.load("catalog", conf)
    strategy = auth or opts.auth_strategy
    authorize = None
    if strategy == "keystone":
        from stowkit.corelib.catalogapi.policy import Authorizer

        authorize = Authorizer(conf)
    trusts = None
    if strategy == "keystone":
        from stowkit.corelib.catalogapi.trusts import TrustKeeper

        trusts = TrustKeeper.from_conf(conf)  # centralized jobs get Keystone trusts
    app = CatalogApp(
        CatalogService(catalog, trusts),
        auth=strategy,
        default_project=opts.default_project,
        max_body=opts.max_body_size,
        authorize=authorize,
    )
    if strategy == "noauth":
        return app
    return with_keystone(app, conf)


def with_keystone(app: CatalogApp, conf: cfg.ConfigOpts) -> Any:
    try:
        from keystonemiddleware import auth_token
    except ImportError:
        raise ConfigError(
            "auth_strategy=keystone needs keystonemiddleware (pip install keystonemiddleware) "
            "or run with --no-auth"
        ) from None
    protected = auth_token.AuthProtocol(app, {"oslo_config_config": conf})

    def pipeline(environ: dict[str, Any], start_response: Any) -> Any:
        # The version documents are public, as in every OpenStack API.
        path = environ.get("PATH_INFO", "") or "/"
        if path.strip("/") in ("", "v1", "v2"):
            return app(environ, start_response)
        return protected(environ, start_response)

    return pipeline


def workers(conf: cfg.ConfigOpts) -> int:
    return conf[GROUP].workers or (os.cpu_count() or 1)


def serve(
    conf: cfg.ConfigOpts,
    app: Any,
    bind: str,
    port: int,
    n_workers: int,
    ready: Callable[[], Any] = lambda: None,
    stopping: Callable[[], Any] = lambda: None,
) -> None:
    """Serve the catalog until SIGTERM or SIGINT (see :func:`stowkit.corelib.wsgiserve.serve`).

    ``ready`` runs once every worker listens, ``stopping`` when the stop signal arrives.
    """
    opts = conf[GROUP]
    wsgiserve.serve(
        app,
        bind,
        port,
        n_workers,
        threads=opts.threads,
        client_timeout=opts.client_timeout,
        request_timeout=opts.request_timeout,
        name="stowkit-catalog",
        ready=ready,
        stopping=stopping,
    )
