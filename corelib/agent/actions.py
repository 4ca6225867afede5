"""The catalog actions the agent runs, by ``freezer_action.action``.

stowkit's own actions make the library calls the CLI commands make (the
volume ones through :func:`stowkit.corelib.volumejobs.run`, as the schedule
and the Docker plugin do) and return the backup documents to record (one
per snapshot, replication or device copy; a purge removes those of the
snapshots it deleted); freezer's actions are handed to ``freezer-agent``.

============================  ===============================  =============================
action                        fields of ``freezer_action``     the CLI command it stands for
============================  ===============================  =============================
``stowkit-volume-snapshot``   ``volume``                       ``snapshot create VOLUME``
``stowkit-volume-replicate``  ``volume``, ``host``             ``volume send`` of a new snapshot
``stowkit-volume-purge``      ``volume``, ``pattern``          ``snapshot purge VOLUME PATTERN``
``stowkit-volume-sync``       ``volume``, ``hosts`` (list)     ``volume sync VOLUME HOST...``
``stowkit-image-sync``        ``regions`` (list, may be [])    ``image sync [REGION...]``
``stowkit-blockstore-upload``   ``device``, ``file``           ``blockstore upload DEVICE FILE``
``stowkit-blockstore-download`` ``device``, ``file``           ``blockstore download DEVICE FILE``
============================  ===============================  =============================
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from stowkit.corelib import catalogdocs, volumejobs
from stowkit.corelib.errors import BackendUnavailable, InvalidArgument, StowkitError
from stowkit.corelib.volumejobs import VolumeAction, VolumeJob

LOG = logging.getLogger(__name__)

#: freezer's own actions (freezer-agent's ``--action``).
FREEZER_ACTIONS = frozenset({"backup", "restore", "info", "admin", "exec"})
#: What a BlockStore copy's lock names (as ``stowkit blockstore upload`` names its own).
UPLOAD_OWNER = "stowkit agent upload"
#: The ``engine_name`` of the documents of a volume's own snapshots.
ENGINE = "stowkit-volume"


@dataclasses.dataclass
class Outcome:
    message: str
    #: backup documents (``POST backups`` bodies) still to record
    backups: list[dict[str, Any]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Context:
    """What actions need, each made on first use (a job of volume actions loads no blockstore)."""

    hostname: str
    volumes: Callable[[], Any] | None = None
    blockstore: Callable[[], Any] | None = None
    #: makes the function regions -> the ``SyncReport`` of ``image sync`` over them
    #: (a factory, as every field here: :meth:`need` calls it with no argument)
    image_sync: Callable[[], Callable[[list[str]], Any]] | None = None
    #: the catalog's backups of a volume/device: for a parent's level
    find_backups: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] = lambda match: []
    #: removes a backup's record from the catalog (None: the catalog cannot)
    forget_backup: Callable[[str], None] | None = None
    freezer_agent: str = "freezer-agent"
    #: set when the run is aborted: long actions stop at the next chance
    cancel: threading.Event = dataclasses.field(default_factory=threading.Event)
    #: the freezer-agent process of the current action (killed on abort)
    process: subprocess.Popen | None = None

    def need(self, what: str) -> Any:
        factory = getattr(self, what)
        if factory is None:
            raise BackendUnavailable(f"no {what} backend is configured for this agent")
        return factory()


def _field(action: Mapping[str, Any], key: str) -> str:
    value = action.get(key)
    if not isinstance(value, str) or not value:
        name = action.get("action")
        raise InvalidArgument(f"action {name}: freezer_action.{key} (a non-empty string) is needed")
    return value


def _list(action: Mapping[str, Any], key: str, required: bool) -> list[str]:
    value = action.get(key, [] if not required else None)
    if isinstance(value, str):
        value = [v for v in value.replace(",", " ").split() if v]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"action {action.get('action')}: {key} must be a list of names")
    if required and not value:
        raise InvalidArgument(f"action {action.get('action')}: {key} must name at least one")
    return value


def _epoch(when: Any) -> int:
    return int(when.timestamp())


def _base(ctx: Context, action: str, container: str, name: str, stamp: int) -> dict[str, Any]:
    return {
        "action": action,
        "container": container,
        "hostname": ctx.hostname,
        "backup_name": name,
        "time_stamp": stamp,
        "mode": "fs",
        "backup_media": "fs",
        "storage": "local",
        "client_os": "linux",
    }


def _levels(level: int) -> dict[str, int]:
    # freezer-agent sends both: backup_id() takes curr_backup_level first.
    return {"curr_backup_level": level, "level": level}


def _volume_job(ctx: Context, job: VolumeJob, dry_run: bool = False) -> volumejobs.Outcome:
    return volumejobs.run(ctx.need("volumes"), job, dry_run=dry_run)


def snapshot(ctx: Context, action: Mapping[str, Any]) -> Outcome:
    volume = _field(action, "volume")  # the driver checks the name, as for the CLI
    done = _volume_job(ctx, VolumeJob(volume, VolumeAction.SNAPSHOT))
    snap = done.snapshot
    assert snap is not None  # what a snapshot job's outcome holds
    meta = {
        **_base(ctx, VolumeAction.SNAPSHOT.freezer_name, volume, snap.name, _epoch(snap.created)),
        **_levels(0),  # a btrfs snapshot is whole, never a diff of another
        "engine_name": ENGINE,
        "path_to_backup": ctx.need("volumes").volume_path(volume),
        "snapshot": snap.name,
        "snapshot_path": snap.path,
    }
    return Outcome(done.message, [meta])


def replicate(ctx: Context, action: Mapping[str, Any]) -> Outcome:
    volume, host = _field(action, "volume"), _field(action, "host")
    done = _volume_job(ctx, VolumeJob(volume, VolumeAction.REPLICATE, host=host))
    sent = done.sent
    assert sent is not None  # what a replicate job's outcome holds
    driver = ctx.need("volumes")
    name = VolumeAction.REPLICATE.freezer_name
    level = 0
    if sent.parent:
        # The parent chain: the send is a diff against the last snapshot both
        # hold; its level is one more than that parent's, as recorded here.
        parents = ctx.find_backups(
            [
                {"container": volume},
                {"backup_name": sent.parent},
                {"action": name},
                {"remote_host": host},
            ]
        )
        known = [p.get("backup_metadata", {}).get("curr_backup_level") for p in parents]
        level = 1 + max((k for k in known if isinstance(k, int)), default=0)
    created = driver.get_snapshot(sent.snapshot).created
    meta = {
        **_base(ctx, name, volume, sent.snapshot, _epoch(created)),
        **_levels(level),
        "engine_name": "btrfs-send",
        "storage": "ssh",
        "remote_host": host,
        "parent": sent.parent or "",
        "snapshot": sent.snapshot,
        "backup_size_compressed": sent.bytes_sent,
        "path_to_backup": driver.volume_path(volume),
    }
    return Outcome(done.message, [meta])


def purge(ctx: Context, action: Mapping[str, Any]) -> Outcome:
    volume, pattern = _field(action, "volume"), _field(action, "pattern")
    dry_run = action.get("dry_run") in (True, "true", "True", "1")
    done = _volume_job(ctx, VolumeJob(volume, VolumeAction.PURGE, pattern=pattern), dry_run)
    deleted = done.purged.deleted if done.purged else ()
    if dry_run or not deleted or ctx.forget_backup is None:
        return Outcome(done.message)
    # The catalog must not go on listing (nor `volume pull` choosing) snapshots
    # that are gone: their records on this host go with them.  A replication's
    # record stays: the copy it records lives on the peer.
    try:
        forgotten = catalogdocs.forget_snapshots(
            ctx.find_backups, ctx.forget_backup, ctx.hostname, volume, deleted
        )
    except StowkitError as err:
        LOG.warning("purge of %s: the catalog still records deleted snapshots: %s", volume, err)
        return Outcome(f"{done.message}; their catalog records could not be removed: {err}")
    return Outcome(f"{done.message}, {forgotten} catalog record(s) removed")


def sync(ctx: Context, action: Mapping[str, Any]) -> Outcome:
    volume, hosts = _field(action, "volume"), _list(action, "hosts", required=True)
    done = _volume_job(ctx, VolumeJob(volume, VolumeAction.SYNCHRONIZE, hosts=tuple(hosts)))
    synced = done.synced
    assert synced is not None  # what a synchronize job's outcome holds
    snap = ctx.need("volumes").get_snapshot(synced.backup)
    meta = {
        **_base(
            ctx, VolumeAction.SYNCHRONIZE.freezer_name, volume, snap.name, _epoch(snap.created)
        ),
        **_levels(0),
        "engine_name": ENGINE,
        "snapshot": snap.name,
        "synchronized_from": ",".join(hosts),
    }
    return Outcome(done.message, [meta])


def image_sync(ctx: Context, action: Mapping[str, Any]) -> Outcome:
    regions = _list(action, "regions", required=False)
    report = ctx.need("image_sync")(regions)
    if report.failed:
        bad = "; ".join(f"{r.region}: {r.error}" for r in report.failed)
        raise BackendUnavailable(f"image sync failed in {len(report.failed)} region(s): {bad}")
    return Outcome(report.summary() or f"{len(report.results)} region(s) in sync")


def _copy(ctx: Context, action: Mapping[str, Any], upload: bool) -> Outcome:
    from stowkit.corelib import blockcopy, blocklease  # late: only device copies need them

    device, path = _field(action, "device"), _field(action, "file")
    store = ctx.need("blockstore")
    if upload:
        with blocklease.held(store, device, UPLOAD_OWNER):
            stats = blockcopy.upload(store, device, path)
    else:
        stats = blockcopy.download(store, device, path)
    name = "stowkit-blockstore-upload" if upload else "stowkit-blockstore-download"
    stamp = int(os.stat(path).st_mtime) if upload else int(time.time())
    meta = {
        **_base(ctx, name, device, os.path.basename(path) or device, stamp),
        **_levels(0),
        "engine_name": "stowkit-blockstore",
        "storage": "blockstore",
        "path_to_backup": path,
        "backup_size_uncompressed": stats.bytes,
        "objects": stats.stored,
        "holes": stats.holes,
    }
    verb = "uploaded to" if upload else "downloaded from"
    return Outcome(f"{path} {verb} device {device} ({stats.bytes} bytes)", [meta])


def freezer(ctx: Context, action: Mapping[str, Any]) -> Outcome:
    """freezer's own action, run by ``freezer-agent`` with the action's fields as options."""
    binary = shutil.which(ctx.freezer_agent)
    name = action.get("action")
    if binary is None:
        raise BackendUnavailable(
            f"action {name} is freezer's: {ctx.freezer_agent} is not on PATH on {ctx.hostname}"
        )
    argv = [binary]
    for key, value in sorted(action.items()):
        if value in (None, "", False):
            continue
        option = "--" + str(key).replace("_", "-")
        argv += [option] if value is True else [option, str(value)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ctx.process = proc
    try:
        output, _ = proc.communicate()
    finally:
        ctx.process = None
    if ctx.cancel.is_set():
        raise StowkitError(f"freezer-agent {name} aborted")
    if proc.returncode:
        last = (output or "").strip().splitlines()[-1:] or [""]
        raise BackendUnavailable(f"freezer-agent {name} exited {proc.returncode}: {last[0][:300]}")
    return Outcome(f"freezer-agent {name} done")


ACTIONS: dict[str, Callable[[Context, Mapping[str, Any]], Outcome]] = {
    VolumeAction.SNAPSHOT.freezer_name: snapshot,
    VolumeAction.REPLICATE.freezer_name: replicate,
    VolumeAction.PURGE.freezer_name: purge,
    VolumeAction.SYNCHRONIZE.freezer_name: sync,
    "stowkit-image-sync": image_sync,
    "stowkit-blockstore-upload": lambda ctx, a: _copy(ctx, a, upload=True),
    "stowkit-blockstore-download": lambda ctx, a: _copy(ctx, a, upload=False),
}


def run(ctx: Context, action: Mapping[str, Any]) -> Outcome:
    """Do one ``freezer_action``; a StowkitError says why it failed."""
    name = action.get("action")
    if name in ACTIONS:
        return ACTIONS[name](ctx, action)
    if name in FREEZER_ACTIONS or not name:
        return freezer(ctx, {**action, "action": name or "backup"})
    known = ", ".join(sorted(ACTIONS) + sorted(FREEZER_ACTIONS))
    raise InvalidArgument(f"unknown action {name!r} (known: {known})")
