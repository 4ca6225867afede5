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

Keystone is spoken to by its one owner (:func:`stowkit.corelib.registry.keystone`'s
``Trustee``): the trustor's own token for creating and deleting (Keystone
lets only the trustor create a trust), the service credentials to learn the
trustee's user id.  The rules (when, which roles, reuse) are this module's.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

from oslo_config import cfg

from stowkit.corelib import registry
from stowkit.corelib.errors import InvalidArgument, NotFound

if TYPE_CHECKING:
    from stowkit.corelib.catalogapi.service import Identity
    from stowkit.corelib.keystone import Trustee

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
    def _keystone(self) -> Trustee:
        """The trustee, logging in from ``auth_section`` (on first use)."""
        section = self.opts.auth_section
        return registry.keystone().trustee(
            self.conf, section, f"[{GROUP}] auth_section = {section}"
        )

    @staticmethod
    def _token(who: Identity) -> str:
        if not who.token:
            raise InvalidArgument("a trust needs the request's Keystone token")
        return who.token

    def create(self, who: Identity) -> dict[str, str]:
        """The job's ``user_credentials``: a trust from ``who`` to the service user."""
        trustee = self._keystone.trustee_id()
        token = self._token(who)
        for trust in self._keystone.find(token, who.project, who.user_id, trustee):
            if trust.get("project_id") == who.project:
                return {"trust_id": trust["id"], "trustor_user_id": who.user_id}
        if self.opts.trusts_delegated_roles:
            roles = [{"name": name} for name in self.opts.trusts_delegated_roles]
        else:
            roles = [{"name": name} for name in sorted(who.roles)]
        body = {
            "trustor_user_id": who.user_id,
            "trustee_user_id": trustee,
            "project_id": who.project,
            "impersonation": False,
            "allow_redelegation": False,
            "roles": roles,
        }
        trust = self._keystone.create(token, who.project, body)
        LOG.info("trust %s: %s delegates %s on %s", trust["id"], who.user_id, roles, who.project)
        return {"trust_id": trust["id"], "trustor_user_id": who.user_id}

    def delete(self, who: Identity, trust_id: str) -> None:
        """Delete a trust no job names any more (a failure is logged, the job is gone)."""
        try:
            self._keystone.delete(self._token(who), who.project, trust_id)
        except NotFound:
            return
        except Exception as exc:  # the job is deleted; the trust is an orphan to report
            LOG.warning("could not delete trust %s: %s", trust_id, exc)
