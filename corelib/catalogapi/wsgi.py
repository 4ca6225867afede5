"""The catalog API as a WSGI application, deployed the way OpenStack APIs are.

``application`` (``stowkit.corelib.catalogapi.wsgi:application``) is what
gunicorn, uwsgi or Apache mod_wsgi load; each worker builds it on its first
request from the configuration files named by ``STOWKIT_CONFIG_FILE``
(comma-separated, else ``/etc/stowkit/stowkit.conf`` when it exists).  The console script
``stowkit-catalog-wsgi`` serves the same application with the standard
library's server, for a quick check (``--host``, ``--port``); production
uses a real WSGI server.

The pipeline is the one ``catalog serve`` serves, from the API's one builder
(:func:`stowkit.corelib.catalogapi.server.build_app`): oslo.middleware
(``GET /healthcheck`` before authentication, ``x-openstack-request-id``,
proxy headers, the body limit ``[catalog_api] max_body_size``), then
keystonemiddleware and the app with its policy.

Migrations are not applied here (several workers would race): run
``stowkit catalog db-sync`` first, as ``freezer-manage db sync`` for freezer-api.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

from stowkit.corelib import config
from stowkit.corelib.catalogapi import server
from stowkit.corelib.catalogapi.app import ERRORS

LOG = logging.getLogger(__name__)

#: Environment variable naming the configuration file(s), comma-separated.
CONFIG_ENV = "STOWKIT_CONFIG_FILE"


def config_files(environ: dict[str, str] | None = None) -> list[str]:
    environ = os.environ if environ is None else environ
    text = environ.get(CONFIG_ENV, "")
    return [f.strip() for f in text.split(",") if f.strip()]


class Application:
    """The WSGI callable servers import: built by the first request of each process.

    A plain attribute (uwsgi looks ``application`` up in the module's namespace),
    built late so that importing reads no configuration, and built in each worker
    after the server forked, so no database connection is shared between processes
    (gunicorn ``--preload`` and uwsgi without ``lazy-apps`` import before forking).
    A configuration that cannot be loaded is logged and answered 500 until fixed.
    """

    def __init__(self) -> None:
        self._app: Any = None
        self._lock = threading.Lock()

    def load(self) -> Any:
        if self._app is None:
            with self._lock:
                if self._app is None:
                    self._app = server.build_app(config.load_conf(config_files()))
        return self._app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        try:
            app = self.load()
        except Exception as exc:  # a broken deployment: say so once per request, log why
            LOG.error("catalog WSGI application cannot start: %s", exc)
            return ERRORS.respond(
                start_response, 500, "the catalog is not configured correctly (see its log)"
            )
        return app(environ, start_response)


#: ``stowkit.corelib.catalogapi.wsgi:application`` for gunicorn, uwsgi, mod_wsgi.
application = Application()


def main(argv: Sequence[str] | None = None) -> int:
    """``stowkit-catalog-wsgi``: serve ``application`` with wsgiref (checks, not production)."""
    from wsgiref import simple_server

    from stowkit.corelib.errors import StowkitError

    parser = argparse.ArgumentParser(
        prog="stowkit-catalog-wsgi",
        description="Serve the catalog's WSGI application with the standard library's "
        "server (one thread; use gunicorn, uwsgi or mod_wsgi in production).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="listen address")
    parser.add_argument("--port", type=int, default=9090, help="TCP port")
    parser.add_argument(
        "--config-file",
        action="append",
        default=None,
        help=f"configuration file (repeatable; default: ${CONFIG_ENV})",
    )
    args = parser.parse_args(argv)
    try:
        conf = config.load_conf(args.config_file or config_files())
        app = server.build_app(conf)
        httpd = simple_server.make_server(args.host, args.port, app)
    except StowkitError as err:
        print(f"stowkit-catalog-wsgi: {err.message}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        print(
            f"stowkit-catalog-wsgi: cannot listen on {args.host}:{args.port}: {err}",
            file=sys.stderr,
        )
        return 1
    print(f"catalog WSGI application on http://{args.host}:{args.port}", file=sys.stderr)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
