"""keystonemiddleware's ``auth_token`` in front of an API, with the paths that need no token.

The middleware validates the token and sets the identity headers
(``X-Identity-Status``, ``X-Project-Id``, ``X-Roles``...) the app reads;
options come from ``[keystone_authtoken]``.  Version and service documents
are public, as in every OpenStack API: the API names them.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from oslo_config import cfg

from stowkit.corelib.errors import ConfigError


def with_keystone(
    app: Any,
    conf: cfg.ConfigOpts,
    public: Collection[str] = ("",),
    delay_auth_decision: bool = False,
) -> Any:
    """``app`` behind ``auth_token``, except the ``public`` paths (without slashes at the ends).

    ``delay_auth_decision``: a missing or refused token reaches the app, which
    answers it in its own words instead of the middleware's 401.
    """
    try:
        from keystonemiddleware import auth_token
    except ImportError:
        raise ConfigError(
            "auth_strategy=keystone needs keystonemiddleware (pip install keystonemiddleware) "
            "or run with --no-auth"
        ) from None
    options: dict[str, Any] = {"oslo_config_config": conf}
    if delay_auth_decision:
        options["delay_auth_decision"] = "true"
    protected = auth_token.AuthProtocol(app, options)
    open_paths = frozenset(public)

    def pipeline(environ: dict[str, Any], start_response: Any) -> Any:
        if (environ.get("PATH_INFO") or "/").strip("/") in open_paths:
            return app(environ, start_response)
        return protected(environ, start_response)

    return pipeline
