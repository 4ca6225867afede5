"""Keystone trusts for centralized jobs, as freezer-api makes them.

A central scheduler (freezer-scheduler with ``--centralized-scheduler``, or
``stowkit agent`` serving several projects) runs jobs on behalf of users who
are not there when the job runs.  When a user creates a job for a central
client (or for any client with ``enforce_trusts``), the catalog asks Keystone
for a trust: the user (trustor) delegates the roles in
``trusts_delegated_roles`` on the job's project to the service user named by
``auth_section`` (trustee), without impersonation or redelegation.  The job
document gets ``user_credentials: {"trust_id", "trustor_user_id"}``; the
scheduler logs in as the service user with that trust id and gets a token
scoped to the user's project.  An existing trust with the same trustor,
trustee and project is reused; deleting the last job that names a trust
deletes the trust.  Options in ``[centralized_scheduler]``, named as
freezer-api's.

Keystone is spoken to over its REST API through keystoneauth1 sessions (no
keystoneclient): the trustor's own token for creating and deleting (Keystone
lets only the trustor create a trust), the service credentials to learn the
trustee's user id.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

from oslo_config import cfg

from stowkit.corelib.errors import BackendUnavailable, ConfigError, InvalidArgument

if TYPE_CHECKING:
    from stowkit.corelib.catalogapi.service import Identity

LOG = logging.getLogger(__name__)

GROUP = "centralized_scheduler"

opts = [
    cfg.BoolOpt(
        "enabled",
        default=True,
        help="Make a Keystone trust for each job of a central client (a client registered "
        'with "is_central": true), so a central scheduler can run it for its user. '
        "False: never make trusts.",
    ),
    cfg.BoolOpt(
        "enforce_trusts",
        default=False,
        help="Make a trust for every job, whatever its client (with auth_strategy = keystone).",
    ),
    cfg.StrOpt(
        "auth_section",
        default="keystone_authtoken",
        help="Group holding the credentials of the service user the trusts delegate to "
        "(the trustee): keystonemiddleware's own by default.",
    ),
    cfg.ListOpt(
        "trusts_delegated_roles",
        default=["member"],
        help="Roles of the job's user delegated on the job's project; empty: every role "
        "of the user's token.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(opts, group=GROUP)


class TrustKeeper:
    """Makes, reuses and deletes the trusts of centralized jobs (one per process)."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        register_opts(conf)
        self.conf = conf
        self.opts = conf[GROUP]

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts) -> TrustKeeper | None:
        register_opts(conf)
        return cls(conf) if conf[GROUP].enabled else None

    def wanted(self, central_client: bool) -> bool:
        return bool(self.opts.enforce_trusts or central_client)

    # -- Keystone ---------------------------------------------------------------------

    @functools.cached_property
    def _service(self) -> Any:
        """The trustee's session, from ``auth_section`` (keystoneauth1's loading API)."""
        from keystoneauth1 import loading, session

        section = self.opts.auth_section
        loading.register_auth_conf_options(self.conf, section)
        try:
            plugin = loading.load_auth_from_conf_options(self.conf, section)
        except Exception as exc:  # keystoneauth's MissingRequiredOptions and friends
            raise ConfigError(
                f"[{GROUP}] auth_section = {section}: cannot load the service credentials: {exc}"
            ) from None
        if plugin is None:
            raise ConfigError(f"[{GROUP}] auth_section = {section} names no credentials")
        return session.Session(auth=plugin)

    def _identity_url(self) -> str:
        return self._service.get_endpoint(service_type="identity", interface="public").rstrip("/")

    def _as_user(self, who: Identity) -> Any:
        """A session with the trustor's own token, scoped to the job's project."""
        from keystoneauth1 import session
        from keystoneauth1.identity import v3

        if not who.token:
            raise InvalidArgument("a trust needs the request's Keystone token")
        auth_url = self._service.auth.auth_url
        return session.Session(auth=v3.Token(auth_url, who.token, project_id=who.project))

    def _call(self, what: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        from keystoneauth1 import exceptions as ks

        try:
            return func(*args, **kwargs)
        except ks.NotFound:
            raise
        except ks.http.HttpError as exc:
            if 400 <= exc.http_status < 500:
                raise InvalidArgument(f"Keystone refused to {what}: {exc.message}") from None
            raise BackendUnavailable(f"Keystone failed to {what}: {exc.message}") from None
        except ks.ClientException as exc:  # unreachable, timeouts
            raise BackendUnavailable(f"cannot reach Keystone to {what}: {exc}") from None

    def create(self, who: Identity) -> dict[str, str]:
        """The job's ``user_credentials``: a trust from ``who`` to the service user."""
        trustee = self._call("learn the service user", self._service.get_user_id)
        user = self._as_user(who)
        base = self._identity_url()
        found = self._call(
            "list trusts",
            user.get,
            f"{base}/OS-TRUST/trusts",
            params={"trustor_user_id": who.user_id, "trustee_user_id": trustee},
        ).json()["trusts"]
        for trust in found:
            if trust.get("project_id") == who.project:
                return {"trust_id": trust["id"], "trustor_user_id": who.user_id}
        if self.opts.trusts_delegated_roles:
            roles = [{"name": name} for name in self.opts.trusts_delegated_roles]
        else:
            roles = [{"name": name} for name in sorted(who.roles)]
        body = {
            "trust": {
                "trustor_user_id": who.user_id,
                "trustee_user_id": trustee,
                "project_id": who.project,
                "impersonation": False,
                "allow_redelegation": False,
                "roles": roles,
            }
        }
        made = self._call("create a trust", user.post, f"{base}/OS-TRUST/trusts", json=body)
        trust = made.json()["trust"]
        LOG.info("trust %s: %s delegates %s on %s", trust["id"], who.user_id, roles, who.project)
        return {"trust_id": trust["id"], "trustor_user_id": who.user_id}

    def delete(self, who: Identity, trust_id: str) -> None:
        """Delete a trust no job names any more (a failure is logged, the job is gone)."""
        from keystoneauth1 import exceptions as ks

        try:
            user = self._as_user(who)
            self._call(
                "delete a trust", user.delete, f"{self._identity_url()}/OS-TRUST/trusts/{trust_id}"
            )
        except ks.NotFound:
            return
        except Exception as exc:  # the job is deleted; the trust is an orphan to report
            LOG.warning("could not delete trust %s: %s", trust_id, exc)
