"""Who may do what in the catalog API: oslo.policy rules defined in code.

The rule names are freezer-api 19's (``backups:delete``, ``jobs:get_all_projects``,
``sessions:job:add``, ...), so an operator's freezer policy file keeps its meaning
here.  Defaults: a project's ``member`` (or ``admin``, or a ``service`` user) may
write, a ``reader`` may only read, and ``admin_or_service`` may register central
clients and list every project's jobs.

``oslopolicy-sample-generator --namespace stowkit.catalog`` writes the sample
(``contrib/catalog/policy.yaml.sample``); ``[oslo_policy] policy_file`` overrides
rules.  Enforced only with ``auth_strategy = keystone``: with ``noauth`` the
roles are whatever the client sends, so a policy would prove nothing, and
:class:`RoleDefaults` decides instead (everything is allowed but the two
privileges, which the ``admin`` and ``service`` roles have).

Either authorizer is asked by the API, once per request
(:mod:`stowkit.corelib.catalogapi.app`); the service receives the resulting
scope and asks nothing.
"""

from __future__ import annotations

from typing import Any

from oslo_config import cfg
from oslo_policy import policy

from stowkit.corelib.catalog import KINDS

#: The project-scoped building blocks, named as in freezer-api.
_BASE = (
    ("context_is_admin", "role:admin", "The cloud administrator."),
    (
        "admin_or_owner",
        "rule:context_is_admin or rule:project_member",
        "An administrator, or a member of the project the document belongs to.",
    ),
    (
        "admin_or_owner_or_service",
        "rule:admin_or_service or rule:project_member",
        "An administrator, a service user, or a member of the document's project.",
    ),
    ("admin_or_service", "role:admin or role:service", "An administrator or a service user."),
    (
        "project_member",
        "role:member and project_id:%(project_id)s",
        "A member of the document's project.",
    ),
    (
        "project_reader",
        "role:reader and project_id:%(project_id)s",
        "A reader of the document's project.",
    ),
    (
        "admin_or_reader_or_service",
        "rule:admin_or_owner_or_service or rule:project_reader",
        "Anyone who may write, or a reader of the document's project.",
    ),
)

READ = "rule:admin_or_reader_or_service"
WRITE = "rule:admin_or_owner"
#: Backups are written by the agents, which may run as a service user.
WRITE_BACKUP = "rule:admin_or_owner_or_service"

_ITEM = {
    "backups": "/v2/{project_id}/backups/{backup_id}",
    "clients": "/v2/{project_id}/clients/{client_id}",
    "jobs": "/v2/{project_id}/jobs/{job_id}",
    "actions": "/v2/{project_id}/actions/{action_id}",
    "sessions": "/v2/{project_id}/sessions/{session_id}",
}


def _operation_rules() -> list[policy.DocumentedRuleDefault]:
    rules = []

    def add(name: str, check: str, text: str, method: str, path: str) -> None:
        rules.append(
            policy.DocumentedRuleDefault(
                name=name,
                check_str=check,
                description=text,
                operations=[{"method": method, "path": path}],
                scope_types=["project"],
            )
        )

    for kind in KINDS:
        write = WRITE_BACKUP if kind == "backups" else WRITE
        noun = kind[:-1]
        collection = f"/v2/{{project_id}}/{kind}"
        add(f"{kind}:create", write, f"Create a {noun}.", "POST", collection)
        add(f"{kind}:delete", write, f"Delete a {noun}.", "DELETE", _ITEM[kind])
        add(f"{kind}:get", READ, f"Show a {noun}.", "GET", _ITEM[kind])
        add(f"{kind}:get_all", READ, f"List or search the {kind}.", "GET", collection)
        if kind != "clients":
            add(f"{kind}:update", write, f"Change (PATCH) a {noun}.", "PATCH", _ITEM[kind])
    for kind in ("actions", "sessions"):
        add(f"{kind}:replace", WRITE, f"Replace a {kind[:-1]}.", "POST", _ITEM[kind])
    add(
        "clients:create_central",
        "rule:admin_or_service",
        'Register a central client ("is_central": true).',
        "POST",
        "/v2/{project_id}/clients",
    )
    add(
        "jobs:get_all_projects",
        "rule:admin_or_service",
        "List every project's jobs (all_projects=true); others see their own.",
        "GET",
        "/v2/{project_id}/jobs",
    )
    add(
        "jobs:event:create",
        WRITE,
        "Send a job event (start, stop, abort, remove).",
        "POST",
        "/v2/{project_id}/jobs/{job_id}/event",
    )
    add(
        "sessions:action:create",
        WRITE,
        "Start or end a job's run in a session.",
        "POST",
        "/v2/{project_id}/sessions/{session_id}/action",
    )
    add(
        "sessions:job:add",
        WRITE,
        "Add a job to a session.",
        "PUT",
        "/v2/{project_id}/sessions/{session_id}/jobs/{job_id}",
    )
    add(
        "sessions:job:remove",
        WRITE,
        "Remove a job from a session.",
        "DELETE",
        "/v2/{project_id}/sessions/{session_id}/jobs/{job_id}",
    )
    return rules


def list_rules() -> list[policy.RuleDefault]:
    """For the ``oslo.policy.policies`` entry point (the sample generator)."""
    base = [
        policy.RuleDefault(name, check, description=text, scope_types=["project"])
        for name, check, text in _BASE
    ]
    return [*base, *_operation_rules()]


#: Every operation rule's name, for the app's route table to be checked against.
RULE_NAMES = frozenset(rule.name for rule in _operation_rules())


#: Rules that reach beyond the caller's project (the request's scope).
PRIVILEGED = frozenset({"clients:create_central", "jobs:get_all_projects"})
#: Keystone roles that hold the privileges without a policy (freezer-api's ``admin_or_service``).
ADMIN_ROLES = frozenset({"admin", "service"})


class RoleDefaults:
    """``noauth``'s authorizer: every rule allowed, the privileged ones to ADMIN_ROLES only."""

    def __call__(self, rule: str, identity: Any) -> bool:
        return rule not in PRIVILEGED or bool(identity.roles & ADMIN_ROLES)

    @staticmethod
    def refusal(rule: str) -> str:
        if rule == "clients:create_central":
            return "only an admin or a service user may register a central client"
        return f"the {rule} privilege is an admin's or a service user's"


class Authorizer:
    """``authorize(rule, identity)``: True when the policy allows it.

    The target is the caller's project: the app has already refused any URL
    naming another project, and every document it touches is the caller's.
    """

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        self.enforcer = policy.Enforcer(conf)
        self.enforcer.register_defaults(list_rules())

    def __call__(self, rule: str, identity: Any) -> bool:
        creds = {
            "roles": sorted(identity.roles),
            "project_id": identity.project,
            "user_id": identity.user_id,
        }
        target = {"project_id": identity.project, "user_id": identity.user_id}
        return bool(self.enforcer.enforce(rule, target, creds, do_raise=False))

    @staticmethod
    def refusal(rule: str) -> str:
        """The 403's message."""
        return f"the policy does not allow {rule}"
