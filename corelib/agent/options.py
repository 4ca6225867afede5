"""The ``[agent]`` option group of ``stowkit agent``."""

from __future__ import annotations

from oslo_config import cfg

GROUP = "agent"

opts: list[cfg.Opt] = [
    cfg.URIOpt(
        "catalog_url",
        default="http://127.0.0.1:9090",
        schemes=["http", "https"],
        help="Base URL of the backup catalog (stowkit catalog serve, or freezer-api's "
        "layout with /v2/{project}).  The default is a local "
        "`stowkit catalog serve --no-auth`.",
    ),
    cfg.StrOpt(
        "project",
        default="default",
        help="Project whose jobs this agent runs (the /v2/{project} of every request; "
        "the catalog's [catalog_api] default_project by default).",
    ),
    cfg.StrOpt(
        "user_id",
        default="stowkit-agent",
        help="X-User-Id sent to a catalog served with --no-auth (recorded as the "
        "user of the backups the agent reports).",
    ),
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


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(opts, group=GROUP)
