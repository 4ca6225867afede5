"""Periodic jobs per volume: where they are kept, and the embedded scheduler that runs them.

A job is ``(volume, action)`` with its own interval in minutes (fractions
allowed); the actions and running one are :mod:`stowkit.corelib.volumejobs`.

* :mod:`.jobs`:         a job, the schedule, the :class:`~.jobs.JobStore` interface, listing rows;
* :mod:`.filestore`:    the schedule file (``[scheduler] store = file``);
* :mod:`.catalogstore`: this host's jobs in the backup catalog (``store = catalog``);
* :mod:`.csvfile`:      buttervolume's ``schedule.csv``, read and written;
* :mod:`.runner`:       the embedded :class:`~.runner.Scheduler` of ``stowkit plugin serve``.

This module holds the ``[scheduler]`` options and :func:`open_store`, which
picks the store they name.  Nothing here imports a backend.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from oslo_config import cfg

from stowkit.corelib.schedule.catalogstore import CatalogScheduleStore
from stowkit.corelib.schedule.filestore import ScheduleStore
from stowkit.corelib.schedule.jobs import JobStore

if TYPE_CHECKING:
    from stowkit.corelib.catalogclient import CatalogClient

GROUP = "scheduler"

opts = [
    cfg.StrOpt(
        "store",
        default="file",
        choices=[
            ("file", "the schedule file; the plugin's embedded scheduler runs the jobs"),
            (
                "catalog",
                "this host's jobs in the backup catalog, reached as `stowkit agent` "
                "reaches it ([agent] options); `stowkit agent` runs them, the embedded "
                "scheduler does not",
            ),
        ],
        help="Where `stowkit schedule` and the Docker plugin keep the scheduled jobs.",
    ),
    cfg.StrOpt(
        "schedule_file",
        default="$state_dir/schedule.json",
        help="JSON file holding the scheduled jobs and their last results.",
    ),
    # Kept so configuration files that set it still load: the one per-volume
    # lock is the volume driver's now (VolumeDriver.volume_lock).
    cfg.StrOpt(
        "lock_dir",
        default="$state_dir/locks",
        deprecated_for_removal=True,
        deprecated_reason="One job per volume is the volume driver's own lock now; "
        "this directory is no longer used.",
        help="Unused (was: directory of the scheduler's per-volume lock files).",
    ),
    cfg.IntOpt(
        "max_workers",
        default=4,
        min=1,
        help="How many jobs (of different volumes) may run at the same time.",
    ),
    cfg.FloatOpt(
        "tick",
        default=1.0,
        min=0.05,
        help="Longest sleep, in seconds, between two looks at the schedule.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(opts, group=GROUP)


def open_store(
    conf: cfg.ConfigOpts, connect: Callable[[cfg.ConfigOpts], CatalogClient] | None = None
) -> JobStore:
    """The store ``[scheduler] store`` names.

    ``connect(conf)`` gives the catalog client; by default this host's, as the
    agent reaches it (:func:`stowkit.corelib.catalogclient.connect`, Keystone included).
    """
    register_opts(conf)
    group = conf[GROUP]
    if group.store == "catalog":
        from stowkit.corelib import catalogclient  # late: the file store needs no HTTP client

        if connect is None:
            catalog = catalogclient.connect(conf, catalogclient.login(conf))
        else:
            catalog = connect(conf)
        return CatalogScheduleStore(catalog, catalog.client_id, catalog.hostname)
    return ScheduleStore(group.schedule_file)
