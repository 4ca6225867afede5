"""Backup documents of the catalog that commands and the agent keep true.

A snapshot deleted on this host must leave the catalog too: the catalog must
not go on listing (nor ``volume pull`` choosing) snapshots that are gone.
The agent's purge and the commands that delete snapshots both remove the
records here, through this host's
:class:`~stowkit.corelib.catalogclient.CatalogClient`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from oslo_config import cfg

from stowkit.corelib.errors import StowkitError
from stowkit.corelib.volumejobs import VolumeAction

LOG = logging.getLogger(__name__)

#: Actions whose backup documents record a snapshot kept on their own host.  A
#: replication's record stays when the sender deletes its snapshot: the copy it
#: records lives on the peer too (``volume pull`` counts it there).
LOCAL_SNAPSHOT_ACTIONS = frozenset(
    a.freezer_name for a in (VolumeAction.SNAPSHOT, VolumeAction.SYNCHRONIZE, VolumeAction.PULL)
)


def forget_snapshots(
    find: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
    forget: Callable[[str], None],
    hostname: str,
    volume: str,
    snapshots: Sequence[str],
) -> int:
    """Remove the catalog's records of ``snapshots`` of ``volume`` deleted on ``hostname``.

    ``find`` and ``forget`` are the client's ``search_backups`` (or the agent's
    ``find_backups``) and ``delete_backup``.  Returns how many records were removed.
    """
    forgotten = 0
    for name in snapshots:
        match = [{"container": volume}, {"backup_name": name}, {"hostname": hostname}]
        for doc in find(match):
            meta = doc.get("backup_metadata", doc)
            if meta.get("action") in LOCAL_SNAPSHOT_ACTIONS and doc.get("backup_id"):
                forget(str(doc["backup_id"]))
                forgotten += 1
    return forgotten


def forget_deleted_snapshots(conf: cfg.ConfigOpts, volume: str, snapshots: list[str]) -> str | None:
    """After a command deleted ``snapshots``: remove their records of this host, if any.

    As the agent's purge does (:func:`forget_snapshots`), so ``volume pull`` and
    ``freezer backup-list`` do not offer what is gone.  Only on a host set up as a
    catalog client (:func:`stowkit.corelib.catalogclient.configured`).  The deletion
    stands either way: a catalog that cannot be reached is a line for the operator,
    not a failure.  Returns that line, or None.
    """
    from stowkit.corelib import catalogclient  # late: the HTTP client costs ~60 ms to import

    if not snapshots or not catalogclient.configured(conf):
        return None
    try:
        catalog = catalogclient.connect(conf, catalogclient.login(conf))
        removed = forget_snapshots(
            catalog.search_backups, catalog.delete_backup, catalog.hostname, volume, snapshots
        )
    except StowkitError as err:
        return f"the catalog still records the deleted snapshot(s): {err}"
    LOG.info("%d catalog record(s) of deleted snapshots removed", removed)
    return None
