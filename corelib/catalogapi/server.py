"""The catalog API's one builder: the WSGI pipeline its configuration describes.

``catalog serve`` and the WSGI entry point (:mod:`stowkit.corelib.catalogapi.wsgi`)
both serve what :func:`build_app` returns, outermost first: oslo.middleware
(:mod:`stowkit.corelib.web.middleware`: proxy headers, request ids, the health
check, the body limit), then, with ``auth_strategy = keystone``,
keystonemiddleware's ``auth_token`` (options in ``[keystone_authtoken]``) so
the project and user come from a validated token and oslo.policy rules
(:mod:`~stowkit.corelib.catalogapi.policy`) decide what its roles allow, then
the app.  ``--no-auth``: no token, the app trusts the URL and ``X-User-Id``;
meant for the embedded, single-host default and tests.

The server is cheroot, one process per worker with SO_REUSEPORT: measured here
it served this app faster than gunicorn (sync), waitress and bjoern
(see doc/catalog.md).
"""

from __future__ import annotations

from typing import Any

from oslo_config import cfg

from stowkit.corelib import registry
from stowkit.corelib.catalogapi.app import ERRORS, CatalogApp
from stowkit.corelib.catalogapi.service import CatalogService
from stowkit.corelib.web import keystone, middleware, serving

GROUP = "catalog_api"
#: The server's name in its log lines and the ``Server`` header.
SERVER_NAME = "stowkit-catalog"

api_opts = [
    *serving.listen_opts("catalog API", 9090, " (freezer-api's)"),
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
    *serving.timing_opts(threads=32, client_timeout=10, request_timeout=20),
    cfg.BoolOpt(
        "auto_sync",
        default=True,
        help="Apply database migrations when the server starts (as `catalog db-sync`).",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(api_opts, group=GROUP)


class Pipeline:
    """The catalog's WSGI pipeline, with its app at hand (its service, its policy)."""

    def __init__(self, outer: Any, app: CatalogApp) -> None:
        self.outer = outer
        self.app = app

    @property
    def service(self) -> CatalogService:
        return self.app.service

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        return self.outer(environ, start_response)


def build_app(conf: cfg.ConfigOpts, catalog: Any = None, auth: str | None = None) -> Pipeline:
    """The WSGI pipeline the configuration describes (``auth`` overrides ``auth_strategy``)."""
    register_opts(conf)
    opts = conf[GROUP]
    catalog = catalog or registry.load("catalog", conf)
    strategy = auth or opts.auth_strategy
    authorize = trusts = None
    if strategy == "keystone":
        from stowkit.corelib.catalogapi.policy import Authorizer
        from stowkit.corelib.catalogapi.trusts import TrustKeeper

        authorize = Authorizer(conf)
        trusts = TrustKeeper.from_conf(conf)  # centralized jobs get Keystone trusts
    app = CatalogApp(
        CatalogService(catalog, trusts),
        auth=strategy,
        default_project=opts.default_project,
        max_body=opts.max_body_size,
        authorize=authorize,
    )
    inner: Any = app
    if strategy == "keystone":
        # The version documents are public, as in every OpenStack API.
        inner = keystone.with_keystone(app, conf, public=("", "v1", "v2"))
    return Pipeline(middleware.with_middleware(inner, conf, opts.max_body_size, ERRORS), app)
