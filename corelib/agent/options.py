"""The ``[agent]`` option group of ``stowkit agent``.

The group also carries keystoneauth1's auth options (``auth_type``,
``auth_url``, ``username`` ..., and ``cloud``): they belong to the Keystone
owner, which registers them when the agent logs in; :func:`sample_opts` lists
them for the sample configuration, asking the owner through the registry, so
this module imports no client library.
"""

from __future__ import annotations

from oslo_config import cfg

GROUP = "agent"
#: the catalog of a no-auth agent without catalog_url
NOAUTH_URL = "http://127.0.0.1:9090"
#: X-User-Id of a no-auth agent without user_id
NOAUTH_USER = "stowkit-agent"

own_opts: list[cfg.Opt] = [
    cfg.StrOpt(
        "auth_strategy",
        default="auto",
        choices=[
            (
                "auto",
                "keystone when credentials are configured (the auth options "
                "below, cloud, --os-cloud, OS_CLOUD or OS_AUTH_URL), else noauth",
            ),
            ("noauth", "send X-User-Id to a catalog served with --no-auth"),
            ("keystone", "log in to Keystone and send its token"),
        ],
        help="How the agent authenticates to the catalog.",
    ),
    cfg.URIOpt(
        "catalog_url",
        default=NOAUTH_URL,
        schemes=["http", "https"],
        help="Base URL of the backup catalog (stowkit catalog serve, or freezer-api's "
        "layout with /v2/{project}).  The default is a local "
        "`stowkit catalog serve --no-auth`; with Keystone and this option not set, "
        "the endpoint of service type 'backup' in the Keystone catalog (stowkit "
        "catalog register) is used.",
    ),
    cfg.StrOpt(
        "interface",
        default="public",
        help="Keystone catalog interface of the backup endpoint (public, internal, "
        "admin); a clouds.yaml entry's own interface comes first.",
    ),
    cfg.StrOpt(
        "region_name",
        help="Region of the backup endpoint in the Keystone catalog (default: any; a "
        "clouds.yaml entry's own region comes first).",
    ),
    cfg.BoolOpt(
        "central",
        default=False,
        help="Central agent (freezer-scheduler's --centralized-scheduler): poll the "
        "client's jobs of every project (all_projects, which the catalog grants to an "
        "admin or service user) and run each job that carries a Keystone trust "
        "(user_credentials.trust_id) with a token of the agent's credentials scoped "
        "by that trust to the job's project.  Jobs of other projects without a "
        "trust are left alone.  Needs Keystone.",
    ),
    cfg.StrOpt(
        "project",
        default="default",
        help="With no auth: the project whose jobs this agent runs (the /v2/{project} "
        "of every request; the catalog's [catalog_api] default_project by default). "
        "With Keystone the project is the token's.",
    ),
    # One option, two uses: keystoneauth1's password plugin registers
    # ``user-id`` (dest user_id) in this group too, so this is that very
    # option (oslo.config takes an equal option twice; a unit test pins the
    # equality).  With Keystone it is the user logging in; without, the
    # X-User-Id sent (NOAUTH_USER when unset).
    cfg.Opt("user-id", type=str, dest="user_id", help="User id"),
    cfg.StrOpt(
        "hostname",
        help="This host's name in the client registration and backup documents "
        "(default: the machine's hostname).",
    ),
    cfg.StrOpt(
        "client_id",
        help="Catalog client id whose jobs this agent runs (default PROJECT_HOSTNAME, "
        "as freezer-scheduler).  Agents sharing one client id never run a job twice.",
    ),
    cfg.FloatOpt(
        "poll_interval",
        default=60.0,
        min=0.2,
        help="Seconds between two looks at the client's jobs (freezer-scheduler's "
        "interval).  A job due before the next poll is run on time.",
    ),
    cfg.IntOpt(
        "claim_timeout",
        default=300,
        min=10,
        help="Seconds without a heartbeat after which another host's running job is "
        "taken as lost (recorded as failed, never run again).  A run of a dead "
        "process on this host is taken as lost at once.",
    ),
    cfg.StrOpt(
        "freezer_agent",
        default="freezer-agent",
        help="freezer-agent executable that runs freezer's own actions (backup, "
        "restore, info, admin, exec); looked up on PATH.",
    ),
]


def sample_opts() -> list[cfg.Opt]:
    """Every option of ``[agent]``, for oslo-config-generator (config.list_opts):
    its own, then the Keystone owner's auth options."""
    from stowkit.corelib import registry  # late: registry imports config, which lists this

    return [*own_opts, *registry.keystone().auth_options()]


def register_opts(conf: cfg.ConfigOpts) -> None:
    """The agent's own options (the login registers the Keystone ones)."""
    conf.register_opts(own_opts, group=GROUP)
