"""Volume jobs: their names, their grammar, their catalog form, and running one.

The one owner of what a volume job is and does.  The schedule (file or
catalog), ``stowkit agent`` and the Docker plugin's buttervolume routes all
name actions with :class:`VolumeAction`, read and write them with
:func:`parse_action` / :meth:`VolumeJob.text`, store them in the catalog with
:meth:`VolumeJob.freezer_action` / :func:`decode`, and run them with
:func:`run`, whose :class:`Outcome` carries the one message of a run.

``snapshot``                 take a snapshot of the volume
``replicate:HOST``           take a snapshot and send it to HOST
``purge:PATTERN``            apply a retention pattern (``4h:1d:2w``) to the volume
``synchronize:HOST1,HOST2``  take a local snapshot, then pull the volume from the peers

:func:`run` calls only :class:`~stowkit.corelib.volume.VolumeDriver` methods,
the ones ``stowkit snapshot create|send|purge`` and ``stowkit volume sync``
call; it takes no lock (the scheduler holds the driver's ``volume_lock``).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

from stowkit.corelib import names, retention
from stowkit.corelib.errors import BackendUnavailable, InvalidArgument
from stowkit.corelib.names import check_name
from stowkit.corelib.volume import PurgeResult, SendResult, Snapshot, SyncResult, VolumeDriver


class VolumeAction(enum.StrEnum):
    """A volume action: its name in a schedule, and ``freezer_name`` in the catalog.

    ``freezer_name`` is the ``freezer_action.action`` of the agent's action and
    the ``action`` of the backup documents it records.  ``pull`` is no job of
    a schedule (``volume pull`` records it); the grammar refuses it.
    """

    freezer_name: str
    scheduled: bool

    def __new__(cls, value: str, freezer_name: str, scheduled: bool = True) -> VolumeAction:
        member = str.__new__(cls, value)
        member._value_ = value
        member.freezer_name = freezer_name
        member.scheduled = scheduled
        return member

    SNAPSHOT = "snapshot", "stowkit-volume-snapshot"
    REPLICATE = "replicate", "stowkit-volume-replicate"
    PURGE = "purge", "stowkit-volume-purge"
    SYNCHRONIZE = "synchronize", "stowkit-volume-sync"
    PULL = "pull", "stowkit-volume-pull", False

    @classmethod
    def from_freezer(cls, name: object) -> VolumeAction | None:
        """The action whose ``freezer_name`` is ``name``, else None."""
        return next((a for a in cls if a.freezer_name == name), None)


#: The actions a schedule may hold, in the order the grammar names them.
SCHEDULED = tuple(a for a in VolumeAction if a.scheduled)
#: The ``freezer_action.action`` of every volume action.
FREEZER_NAMES = frozenset(a.freezer_name for a in VolumeAction)

#: The grammar in one line, for help texts and errors.
USAGE = "snapshot, replicate:HOST, purge:PATTERN or synchronize:HOST1,HOST2"


def check_host(host: str) -> str:
    """The rule ``volume send``/``sync`` apply (:func:`stowkit.corelib.names.check_host`).

    Checked when a job is added, so a host its run would refuse never gets
    into a schedule.
    """
    names.check_host(host)
    return host


def parse_action(action: str) -> tuple[VolumeAction, list[str]]:
    """``'replicate:h1'`` -> ``(VolumeAction.REPLICATE, ['h1'])``; raise on anything unknown."""
    if not isinstance(action, str) or not action:
        raise InvalidArgument("invalid action: it must not be empty")
    name, sep, arg = action.partition(":")
    kind = next((a for a in SCHEDULED if a == name), None)
    if kind is None:
        raise InvalidArgument(f"invalid action {action!r}: use {USAGE}")
    if kind is VolumeAction.SNAPSHOT:
        if sep:
            raise InvalidArgument(f"invalid action {action!r}: snapshot takes no argument")
        return kind, []
    if not arg:
        raise InvalidArgument(f"invalid action {action!r}: {kind} needs an argument")
    if kind is VolumeAction.PURGE:
        retention.parse_pattern(arg)  # the one parser purge itself uses
        return kind, [arg]
    if kind is VolumeAction.REPLICATE:
        return kind, [check_host(arg)]
    return kind, [check_host(h) for h in arg.split(",")]


@dataclasses.dataclass(frozen=True)
class VolumeJob:
    """One action on one volume, with ``host`` (replicate), ``pattern`` (purge) or ``hosts``."""

    volume: str
    action: VolumeAction
    host: str = ""
    pattern: str = ""
    hosts: tuple[str, ...] = ()

    @classmethod
    def parse(cls, volume: str, action: str) -> VolumeJob:
        """The job a schedule line names (``volume``, ``'replicate:h1'``); checked."""
        check_name(volume, "volume name")
        kind, args = parse_action(action)
        if kind is VolumeAction.REPLICATE:
            return cls(volume, kind, host=args[0])
        if kind is VolumeAction.PURGE:
            return cls(volume, kind, pattern=args[0])
        if kind is VolumeAction.SYNCHRONIZE:
            return cls(volume, kind, hosts=tuple(args))
        return cls(volume, kind)

    @property
    def text(self) -> str:
        """The action as a schedule writes it: ``replicate:h1``, ``synchronize:a,b``."""
        arg = {
            VolumeAction.REPLICATE: self.host,
            VolumeAction.PURGE: self.pattern,
            VolumeAction.SYNCHRONIZE: ",".join(self.hosts),
        }.get(self.action)
        return str(self.action) if arg is None else f"{self.action}:{arg}"

    def freezer_action(self) -> dict[str, Any]:
        """The ``freezer_action`` of the agent's action that does this job."""
        body: dict[str, Any] = {"action": self.action.freezer_name, "volume": self.volume}
        if self.action is VolumeAction.REPLICATE:
            body["host"] = self.host
        elif self.action is VolumeAction.PURGE:
            body["pattern"] = self.pattern
        elif self.action is VolumeAction.SYNCHRONIZE:
            body["hosts"] = list(self.hosts)
        return body


def decode(body: object) -> VolumeJob | None:
    """The job a ``freezer_action`` encodes, if the schedule commands could have written it."""
    if not isinstance(body, Mapping):
        return None
    kind = VolumeAction.from_freezer(body.get("action"))
    if kind is None or not kind.scheduled:
        return None
    arg = {VolumeAction.REPLICATE: body.get("host"), VolumeAction.PURGE: body.get("pattern")}.get(
        kind
    )
    if kind is VolumeAction.SYNCHRONIZE:
        hosts = body.get("hosts")
        arg = ",".join(hosts) if isinstance(hosts, list) else hosts
    text = str(kind) if kind is VolumeAction.SNAPSHOT else f"{kind}:{arg}"
    try:
        return VolumeJob.parse(body.get("volume"), text)  # type: ignore[arg-type]
    except InvalidArgument:
        return None


# -- running one ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a run did, and its one message (the schedule's last message, the agent's line)."""

    job: VolumeJob
    message: str
    #: the snapshot a ``snapshot`` job took
    snapshot: Snapshot | None = None
    #: what a ``replicate`` job sent
    sent: SendResult | None = None
    #: what a ``purge`` job deleted and kept
    purged: PurgeResult | None = None
    #: what a ``synchronize`` job pulled (always ``ok``: a failed peer raises)
    synced: SyncResult | None = None


def send_mode(result: SendResult) -> str:
    """``full``, ``incremental`` or ``already there``: what a send did."""
    if result.already_there:
        return "already there"
    return "incremental" if result.parent else "full"


def sync_failures(result: SyncResult) -> str:
    """One line naming each peer a sync failed from, with its reason."""
    parts = [
        msg if peer in msg else f"{peer}: {msg}"
        for peer, msg in result.peers.items()
        if msg != "ok"
    ]
    return f"sync of {result.volume} failed: " + "; ".join(parts)


def purge_message(result: PurgeResult) -> str:
    verb = "would delete" if result.dry_run else "deleted"
    return f"{verb} {len(result.deleted)} snapshot(s), kept {len(result.kept)}"


def run(driver: VolumeDriver, job: VolumeJob, *, dry_run: bool = False) -> Outcome:
    """Do ``job`` through ``driver``; ``dry_run`` applies to a purge only.

    A failure raises (a StowkitError says why), and so does a sync that some
    peer refused (``BackendUnavailable`` naming each such peer).
    """
    if job.action is VolumeAction.SNAPSHOT:
        snap = driver.create_snapshot(job.volume)
        return Outcome(job, snap.name, snapshot=snap)
    if job.action is VolumeAction.REPLICATE:
        sent = driver.replicate(job.volume, job.host)
        return Outcome(job, f"{sent.snapshot} sent to {sent.host} ({send_mode(sent)})", sent=sent)
    if job.action is VolumeAction.PURGE:
        purged = driver.purge(job.volume, job.pattern, dry_run=dry_run)
        return Outcome(job, purge_message(purged), purged=purged)
    if job.action is VolumeAction.SYNCHRONIZE:
        # the driver snapshots the local data first, then pulls
        synced = driver.sync_volume(job.volume, list(job.hosts))
        if not synced.ok:
            raise BackendUnavailable(sync_failures(synced))
        message = f"{synced.backup} taken, synchronized from {','.join(job.hosts)}"
        return Outcome(job, message, synced=synced)
    raise InvalidArgument(f"{job.action} is no job a schedule runs")
