"""oslo.middleware around a deployed API, outermost first.

``http_proxy_to_wsgi`` (``[oslo_middleware] enable_proxy_headers_parsing``),
``request_id`` (``x-openstack-request-id``), ``healthcheck`` at its own path
ahead of authentication (as paste's urlmap mounts it for freezer-api), then
``sizelimit`` and the app.  The body limit has one owner, the API's: the app's
bounded reader (:func:`stowkit.corelib.web.request.read_body`) enforces it and
sizelimit is set to that same number, so ``[oslo_middleware]
max_request_body_size`` is overridden, never a second limit.
"""

from __future__ import annotations

from typing import Any

from oslo_config import cfg

from stowkit.corelib.web.responses import JsonErrors

#: Where oslo.middleware's healthcheck answers (load balancers poll it).
HEALTHCHECK_PATH = "/healthcheck"


def with_middleware(app: Any, conf: cfg.ConfigOpts, max_body: int, errors: JsonErrors) -> Any:
    """``app`` behind sizelimit, healthcheck, request_id and proxy headers."""
    from oslo_middleware import healthcheck, http_proxy_to_wsgi, request_id, sizelimit

    limited = sizelimit.RequestBodySizeLimiter(app, conf)
    # One limit: the API's.  (The limiter registered its options just above.)
    conf.set_override("max_request_body_size", max_body, group="oslo_middleware")
    health = healthcheck.Healthcheck(None, conf)

    def checked(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO", "").rstrip("/") == HEALTHCHECK_PATH:
            return health(environ, start_response)
        if _declared_length(environ) > max_body:
            # sizelimit would answer in plain text; the API's clients read JSON
            environ["stowkit.close"] = True  # the body is not read
            message = f"body too large (limit {max_body} bytes)"
            return errors.respond(start_response, 413, message, [("Connection", "close")])
        return limited(environ, start_response)

    with_ids = request_id.RequestId(checked, conf)
    return http_proxy_to_wsgi.HTTPProxyToWSGI(with_ids, conf)


def _declared_length(environ: dict[str, Any]) -> int:
    try:
        return int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0  # the app's reader says what is wrong with it
