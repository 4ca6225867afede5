"""Volumes and their snapshots: the data classes and the VolumeDriver interface.

A *volume* is a writable tree a container mounts; a *snapshot* is a read-only
point-in-time copy of one, named ``VOLUME@TIMESTAMP`` where TIMESTAMP is UTC
in :data:`SNAPSHOT_TIME_FORMAT` (``2026-11-22T03-40-05.123456``: sortable as
text, and free of ``:`` so it is a safe file name everywhere).  Names other
tools wrote (buttervolume's local-time ``%Y-%m-%dT%H:%M:%S.%f``) are read too
when the caller names their formats (:func:`split_snapshot_name`).

Every method that takes a name checks it with :func:`stowkit.corelib.names.check_name`
(snapshot names with :func:`split_snapshot_name`) before it touches anything,
and raises :mod:`stowkit.corelib.errors` classes only:

* ``InvalidName``/``InvalidArgument`` for a bad name, pattern or option,
* ``NotFound`` for a missing volume or snapshot,
* ``AlreadyExists`` when a target name is taken (create, clone, restore),
* ``Conflict`` when the volume is mounted and the operation would pull data
  from under a container (delete, restore without ``force``),
* ``Locked`` (a ``Conflict``) when :meth:`VolumeDriver.volume_lock` is asked
  not to wait and another holder has the volume,
* ``BackendUnavailable`` when a tool, the filesystem or a remote host fails.

Mount accounting lives in the driver (:meth:`VolumeDriver.mount` /
:meth:`VolumeDriver.unmount`), keyed by the caller's mount ID, and is
persistent, so the Docker plugin, ``volume show`` and ``snapshot restore``
all see the same counts, even across a plugin restart.  IDs recorded before
the host last booted are stale (no container survives a reboot) and are not
counted; :meth:`VolumeDriver.clear_mounts` forgets the others on request.

Front ends (CLI, Docker plugin, scheduler) call only what is declared here.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import datetime as dt
import enum
from collections.abc import Mapping, Sequence

from stowkit.corelib.driver import Driver
from stowkit.corelib.errors import BackendUnavailable, InvalidArgument, InvalidName
from stowkit.corelib.names import check_name

#: strftime format of the part after ``@`` in a snapshot name (always UTC).
SNAPSHOT_TIME_FORMAT = "%Y-%m-%dT%H-%M-%S.%f"
SNAPSHOT_SEPARATOR = "@"


class VolumeCapability(enum.StrEnum):
    """Optional features a VolumeDriver may declare in ``capabilities``.

    Snapshots, clones, restore, send, sync, purge and mount accounting are
    not capabilities: they are the VolumeDriver interface, which every
    backend implements.  What is optional are the create options below;
    front ends call :func:`check_create_options` before ``create_volume``.
    """

    #: the ``compression`` create option: the volume's files are compressed
    COMPRESSION = "compression"
    #: the ``copyonwrite`` create option: ``copyonwrite=false`` makes the
    #: volume's files no-copy-on-write (what databases and VM images want)
    NOCOW = "nocow"


#: Create options a backend offers only with a capability.
CREATE_OPTION_CAPABILITIES: Mapping[str, VolumeCapability] = {
    "compression": VolumeCapability.COMPRESSION,
    "copyonwrite": VolumeCapability.NOCOW,
}


def check_create_options(driver: VolumeDriver, options: Mapping[str, str] | None) -> None:
    """InvalidArgument, in one line, for a create option ``driver`` lacks the capability of.

    Other option names are left for the backend to judge.
    """
    for key in options or {}:
        capability = CREATE_OPTION_CAPABILITIES.get(key)
        if capability is not None:
            driver.require(capability)


def snapshot_name(volume: str, when: dt.datetime) -> str:
    """``VOLUME@TIMESTAMP`` for a snapshot of ``volume`` taken at ``when`` (made UTC)."""
    check_name(volume, "volume name")
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    stamp = when.astimezone(dt.UTC).strftime(SNAPSHOT_TIME_FORMAT)
    return f"{volume}{SNAPSHOT_SEPARATOR}{stamp}"


def _foreign_stamp(stamp: str, fmt: str) -> dt.datetime | None:
    """``stamp`` read with another tool's strftime ``fmt`` (naive = local time), or None.

    Only a stamp that ``fmt`` writes back exactly is accepted, so the
    characters allowed are the format's own; never one holding ``/``, ``@``
    or a NUL, which no snapshot file name can.
    """
    if not stamp or any(c in stamp for c in "/@\0") or stamp.startswith("."):
        return None
    try:
        when = dt.datetime.strptime(stamp, fmt)
    except ValueError:
        return None
    if when.strftime(fmt) != stamp:
        return None
    # A naive time is the writer's local time (buttervolume uses datetime.now()).
    return when.astimezone(dt.UTC)


def split_snapshot_name(
    name: object, foreign_formats: Sequence[str] = ()
) -> tuple[str, dt.datetime]:
    """``VOLUME@TIMESTAMP`` -> (volume, aware UTC datetime), or :class:`InvalidName`.

    TIMESTAMP is stowkit's UTC :data:`SNAPSHOT_TIME_FORMAT`, or one of
    ``foreign_formats`` (strftime formats of other tools' names, e.g.
    buttervolume's ``%Y-%m-%dT%H:%M:%S.%f``, read as local time unless the
    format carries a zone).
    """
    if not isinstance(name, str) or SNAPSHOT_SEPARATOR not in name:
        check_name(name, "snapshot name")  # empty, too long, bad characters
        raise InvalidName(f"invalid snapshot name {name!r}: expected VOLUME@TIMESTAMP")
    volume, _, stamp = name.partition(SNAPSHOT_SEPARATOR)
    check_name(volume, "volume name")
    try:
        check_name(stamp, "snapshot timestamp")
        try:
            when = dt.datetime.strptime(stamp, SNAPSHOT_TIME_FORMAT).replace(tzinfo=dt.UTC)
        except ValueError:
            raise InvalidName(
                f"invalid snapshot name {name!r}: the part after '@' must look like "
                "2026-11-22T03-40-05.123456 (UTC)"
                + (f" or match {', '.join(foreign_formats)}" if foreign_formats else "")
            ) from None
    except InvalidName:
        if len(name) <= 255:
            for fmt in foreign_formats:
                foreign = _foreign_stamp(stamp, fmt)
                if foreign is not None:
                    return volume, foreign
        raise
    return volume, when


def parse_rate(text: object) -> int:
    """A send bandwidth limit: '0', '500K', '10M' -> bytes per second (0 = no limit)."""
    raw = str(text).strip().upper().removesuffix("/S").removesuffix("B")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    mult = 1
    if raw and raw[-1] in units:
        raw, mult = raw[:-1], units[raw[-1]]
    try:
        value = float(raw) * mult
    except ValueError:
        raise InvalidArgument(f"invalid bandwidth limit {text!r}: use e.g. 500K or 10M") from None
    if value < 0:
        raise InvalidArgument(f"invalid bandwidth limit {text!r}: must not be negative")
    return int(value)


@dataclasses.dataclass(frozen=True)
class Volume:
    name: str
    path: str
    created: dt.datetime | None = None
    #: bytes used, when the backend can tell cheaply (None otherwise, and in lists)
    size: int | None = None
    snapshot_count: int = 0
    mount_count: int = 0
    #: what the volume was created with, e.g. {"copyonwrite": "false", "compression": "zstd"}
    options: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A read-only point-in-time copy, named ``VOLUME@TIMESTAMP`` (UTC)."""

    name: str
    volume: str
    created: dt.datetime
    path: str
    uuid: str | None = None
    received_uuid: str | None = None
    parent_uuid: str | None = None
    #: True for a snapshot that another host sent here (kept apart from local ones)
    received: bool = False


@dataclasses.dataclass(frozen=True)
class RestoreResult:
    volume: str  #: the volume that now holds the snapshot's data
    snapshot: str  #: the snapshot restored
    #: the snapshot taken of the volume's data before it was replaced (None if no volume was there)
    backup: str | None


@dataclasses.dataclass(frozen=True)
class SendResult:
    snapshot: str
    host: str  #: the peer as given (``[user@]host[:port]``)
    parent: str | None  #: the local snapshot the stream was made against; None = full send
    bytes_sent: int = 0  #: bytes on the wire (after compression)
    already_there: bool = False  #: the peer held it already; nothing was sent

    @property
    def incremental(self) -> bool:
        return self.parent is not None


@dataclasses.dataclass(frozen=True)
class SyncResult:
    volume: str
    backup: str  #: the local snapshot taken before pulling
    #: peer -> "ok" or the one-line error of that peer; sync goes on past a failing peer
    peers: Mapping[str, str]

    @property
    def ok(self) -> bool:
        return all(v == "ok" for v in self.peers.values())


@dataclasses.dataclass(frozen=True)
class PurgeResult:
    volume: str
    pattern: str
    dry_run: bool
    #: snapshots deleted (or, on a dry run, that would be), oldest first
    deleted: Sequence[str]
    #: snapshots kept, oldest first
    kept: Sequence[str]
    #: snapshot -> why it was kept although the pattern condemns it
    #: ("newest snapshot", "last sent to HOST")
    protected: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class VolumeStatus:
    """What the Docker plugin's Get shows of a volume (``docker volume inspect``)."""

    snapshot_count: int
    newest_snapshot: str | None
    #: peer -> the last snapshot sent there (``{"snapshot": NAME}``, plus ``"at"`` when known)
    replication: Mapping[str, Mapping[str, str]]
    mount_count: int


class VolumeDriver(Driver):
    """A place holding volumes and read-only snapshots of them (the ``stowkit.volume`` contract).

    Lifecycle.  The registry builds a driver from its option group
    (``Driver.__init__``): cheap, touching nothing, so a bad configuration
    fails on first use, not at load.  The first operation sets the backend up
    (the btrfs root's directories, after checking the filesystem) and raises
    ``BackendUnavailable`` when it cannot.  A driver is shared by the threads
    of one process (the Docker plugin serves each request in a thread) and
    by other processes on the same host (the CLI, the scheduler); every
    operation on a volume takes :meth:`volume_lock`, so they never interleave.

    Mounts are records, not kernel mounts: :meth:`mount` records a caller's
    mount ID and returns the path Docker bind-mounts.  Records are kept
    across restarts and ignored after a reboot; while a volume has any,
    :meth:`delete_volume` and :meth:`restore` refuse (``Conflict``) unless
    forced.

    Failures.  Every operation checks its names first and touches nothing
    for a bad one.  An operation that fails leaves either the old state or
    the new one, never half of it: a crash may leave hidden temporaries,
    which :meth:`cleanup` collects (the Docker plugin runs it at start).
    Only :mod:`stowkit.corelib.errors` classes are raised, as each method says.
    """

    # -- volumes ---------------------------------------------------------------

    @abc.abstractmethod
    def create_volume(self, name: str, options: Mapping[str, str] | None = None) -> Volume:
        """Create an empty volume.

        :param name: the new volume's name.
        :param options: create options, strings.  The btrfs backend knows
            ``copyonwrite`` (``true``/``false``, default from config, ``true``)
            and ``compression`` (``zstd``/``lzo``/``zlib``/``none``, or
            buttervolume's ``true``/``false``).
        :returns: the new volume.
        :raises InvalidName: for a bad ``name``.
        :raises InvalidArgument: for an unknown option or value.
        :raises AlreadyExists: when the name is taken.
        :raises BackendUnavailable: when the backend cannot be set up or fails.
        """

    @abc.abstractmethod
    def get_volume(self, name: str, with_size: bool = False) -> Volume:
        """One volume with its counts and options.

        :param name: the volume's name.
        :param with_size: also add up the bytes its files use (a walk of the
            tree: what ``volume show`` wants, not what the Docker plugin's Get needs).
        :returns: the volume (``size`` None unless ``with_size``).
        :raises InvalidName: for a bad ``name``.
        :raises NotFound: when there is no such volume.
        """

    @abc.abstractmethod
    def list_volumes(self) -> Sequence[Volume]:
        """Every volume, sorted by name.

        Cheap: no process per volume.

        :returns: the volumes; ``size`` is None, and ``created`` may be None
            when the backend cannot tell it cheaply.
        :raises BackendUnavailable: when the backend cannot be set up.
        """

    def volume_entries(self) -> Sequence[tuple[str, str, dt.datetime | None]]:
        """What Docker's List needs, as cheaply as the backend can.

        Docker calls List often (every ``docker volume ls``, and dockerd at
        start for each volume it knows); a backend that can answer this
        cheaper than :meth:`list_volumes` (no counts) overrides it.

        :returns: ``(name, path, created)`` of every volume, sorted by name.
        :raises BackendUnavailable: as :meth:`list_volumes`.
        """
        return [(v.name, v.path, v.created) for v in self.list_volumes()]

    def volume_created(self, name: str) -> dt.datetime | None:
        """When the volume was created, as cheaply as the backend can (the Docker plugin's Get).

        :returns: an aware UTC time, or None when unknown.
        :raises InvalidName: for a bad ``name``.
        :raises NotFound: when there is no such volume.
        """
        return self.get_volume(name).created

    @abc.abstractmethod
    def volume_path(self, name: str) -> str:
        """Where the volume's data lives (what a container bind-mounts).

        :raises InvalidName: for a bad ``name``.
        :raises NotFound: when there is no such volume.
        """

    @abc.abstractmethod
    def delete_volume(self, name: str, force: bool = False) -> None:
        """Delete a volume; its snapshots stay.

        :param force: delete it even while mount IDs are recorded for it.
        :raises InvalidName: for a bad ``name``.
        :raises NotFound: when there is no such volume.
        :raises Conflict: while it is mounted, unless ``force``.
        :raises BackendUnavailable: when the backend fails.
        """

    @abc.abstractmethod
    def clone_volume(self, source: str, target: str) -> Volume:
        """A new writable volume ``target`` with ``source``'s current data.

        :returns: the new volume.
        :raises InvalidName: for a bad ``source`` or ``target`` (checked before anything).
        :raises NotFound: when there is no volume ``source``.
        :raises AlreadyExists: when ``target`` exists (never nests one volume in another).
        :raises BackendUnavailable: when the backend fails.
        """

    # -- mount accounting --------------------------------------------------------

    @abc.abstractmethod
    def mount(self, name: str, mount_id: str) -> str:
        """Record that ``mount_id`` uses the volume.

        Idempotent per ``mount_id``: mounting twice with one ID counts once.

        :param mount_id: any non-empty string up to 256 characters (Docker's is hex).
        :returns: the volume's path.
        :raises InvalidName: for a bad ``name``.
        :raises InvalidArgument: for a bad ``mount_id``.
        :raises NotFound: when there is no such volume (also when it was
            deleted while this call waited for the volume's lock).
        """

    @abc.abstractmethod
    def unmount(self, name: str, mount_id: str) -> None:
        """Forget ``mount_id``'s use of the volume.  Unknown IDs and volumes are ignored.

        :raises InvalidName: for a bad ``name``.
        :raises InvalidArgument: for a bad ``mount_id``.
        """

    @abc.abstractmethod
    def mounts(self, name: str) -> Sequence[str]:
        """The mount IDs recorded for the volume in this boot (may be empty).

        :raises InvalidName: for a bad ``name``.
        """

    def clear_mounts(self, name: str) -> list[str]:
        """Forget every mount ID recorded for the volume.

        For IDs a crash left behind (a container that is gone, a plugin that
        died): it unmounts nothing, it only stops them blocking delete/restore.

        :returns: the IDs forgotten.
        :raises InvalidName: for a bad ``name``.
        :raises NotFound: when there is no such volume (the btrfs backend).
        """
        ids = list(self.mounts(name))
        for mount_id in ids:
            self.unmount(name, mount_id)
        return ids

    def cleanup(self) -> list[tuple[str, str]]:
        """Collect what crashed operations left behind.

        Safe while other processes use the driver: only what no live process
        is working on is touched.  Default: nothing to do.

        :returns: (item, what was done) pairs.
        :raises BackendUnavailable: when the backend cannot be set up.
        """
        return []

    # -- the per-volume lock ------------------------------------------------------

    @abc.abstractmethod
    def volume_lock(
        self, name: str, *, wait: bool = True
    ) -> contextlib.AbstractContextManager[None]:
        """The volume's one job lock, held across processes.

        One job, send, pull or purge of a volume at a time: a front end that
        runs a job on a volume (the scheduler) takes it around the whole job,
        and the driver's own sends, pulls and purges take it too, so a purge
        never removes the parent a send is using.  It is reentrant in the
        thread that holds it, so driver operations called inside it do not
        deadlock; other threads and processes wait.  A holder that dies
        releases it.  Mount, unmount, restore and delete do not wait for it
        (a driver serializes those with a short lock of its own), so a
        container can start while its volume replicates.

        :param name: the volume's name (it need not exist).
        :param wait: False to fail at once instead of waiting for another holder.
        :returns: a context manager holding the lock while its block runs.
        :raises InvalidName: for a bad ``name``.
        :raises Locked: with ``wait=False``, when another holder has it
            (``volume 'NAME' is busy with another job``).
        :raises BackendUnavailable: when the lock's storage cannot be reached.
        """

    # -- snapshots ---------------------------------------------------------------

    @abc.abstractmethod
    def create_snapshot(self, volume: str) -> Snapshot:
        """A read-only snapshot of the volume's data now, named ``VOLUME@now`` (UTC).

        :returns: the new snapshot.
        :raises InvalidName: for a bad ``volume``.
        :raises NotFound: when there is no such volume.
        :raises BackendUnavailable: when the backend fails.
        """

    @abc.abstractmethod
    def get_snapshot(self, name: str) -> Snapshot:
        """One snapshot, local or received (a receive still in progress is not one).

        :param name: ``VOLUME@TIMESTAMP`` (see :func:`split_snapshot_name`).
        :raises InvalidName: for a bad ``name``.
        :raises NotFound: when there is no such snapshot.
        """

    @abc.abstractmethod
    def list_snapshots(self, volume: str | None = None) -> Sequence[Snapshot]:
        """Snapshots, local and received, oldest first.

        :param volume: only this volume's; a name with no snapshots (or no
            volume) gives an empty list, not ``NotFound``.
        :raises InvalidName: for a bad ``volume``.
        """

    def snapshot_entries(self, volume: str | None = None) -> Sequence[str]:
        """Names in the snapshot directory as it holds them, for buttervolume's listing.

        buttervolume lists its snapshot directory as is: in the order its
        entries were made, sent markers (``VOLUME@STAMP@HOST``) included.  A
        backend that keeps such records besides snapshots says so here; the
        default is :meth:`list_snapshots`' names.

        :raises InvalidName: for a bad ``volume``.
        """
        return [s.name for s in self.list_snapshots(volume)]

    def volume_status(self, name: str) -> VolumeStatus:
        """Counts for the Docker plugin's Get: cheap (no walk of the data).

        :raises InvalidName: for a bad ``name``.
        :raises NotFound: when there is no such volume.
        """
        self.volume_path(name)  # NotFound for a volume that is not there
        snaps = self.list_snapshots(name)
        return VolumeStatus(
            snapshot_count=len(snaps),
            newest_snapshot=snaps[-1].name if snaps else None,
            replication={},
            mount_count=len(self.mounts(name)),
        )

    @abc.abstractmethod
    def delete_snapshot(self, name: str) -> None:
        """Delete one snapshot.

        :raises InvalidName: for a bad ``name``.
        :raises NotFound: when there is no such snapshot.
        :raises BackendUnavailable: when the backend fails.
        """

    @abc.abstractmethod
    def restore(self, name: str, target: str | None = None, force: bool = False) -> RestoreResult:
        """Put a snapshot's data back into a volume.

        ``name`` is a snapshot, or a volume name meaning that volume's newest
        snapshot.  ``target`` defaults to the snapshot's own volume.  When the
        target exists its current data is first snapshotted (``backup`` in the
        result); a mounted target is ``Conflict`` unless ``force``, and even
        then the directory a container has bind-mounted is never deleted from
        under it (see doc/volumes.md for what a forced restore does).

        :returns: the volume restored, the snapshot used and the backup taken.
        :raises InvalidName: for a bad ``name`` or ``target``.
        :raises NotFound: when there is no such snapshot, or the volume has none.
        :raises Conflict: when the target is mounted and not ``force``, or
            its path holds something that is not a volume.
        :raises BackendUnavailable: when the backend fails.
        """

    # -- replication -------------------------------------------------------------

    @abc.abstractmethod
    def send_snapshot(
        self,
        name: str,
        host: str,
        *,
        compress: bool | None = None,
        bwlimit: int | None = None,
    ) -> SendResult:
        """Send a snapshot to ``host`` (``[user@]host[:port]``) over ssh.

        Incremental from the newest snapshot both sides hold (found by UUIDs),
        else full.  ``compress`` (zstd on both ends) and ``bwlimit`` (bytes per
        second, 0 = none) default to the configuration.  A failed or interrupted
        transfer leaves nothing on the peer.

        :returns: what was sent (``already_there`` when the peer held it).
        :raises InvalidName: for a bad snapshot name or host.
        :raises InvalidArgument: for a negative ``bwlimit``.
        :raises NotFound: when there is no such snapshot.
        :raises Conflict: when the peer holds a different snapshot of that name.
        :raises ConfigError: for a bad ``peer_addresses`` entry.
        :raises BackendUnavailable: when ssh, the peer or the transfer fails.
        """

    def receive_snapshot(
        self,
        name: str,
        host: str,
        *,
        compress: bool | None = None,
        bwlimit: int | None = None,
        dry_run: bool = False,
    ) -> SendResult:
        """Fetch snapshot ``name`` from ``host``: :meth:`send_snapshot` run from this side.

        Incremental from the newest snapshot both sides hold, else full;
        ``already_there`` (and ``snapshot`` = the copy here) when this side
        holds it; ``dry_run`` chooses the parent and moves nothing.  ``volume
        pull`` uses it.

        :returns: what was received.
        :raises InvalidName: for a bad snapshot name or host.
        :raises InvalidArgument: for a negative ``bwlimit``.
        :raises NotFound: when the peer does not hold it.
        :raises Conflict: when a different snapshot of that name is here.
        :raises BackendUnavailable: when ssh, the peer or the transfer fails,
            and (the default) for a backend that cannot pull.
        """
        raise BackendUnavailable(f"the {type(self).__name__} backend cannot pull snapshots")

    def replicate(self, volume: str, host: str) -> SendResult:
        """Snapshot ``volume`` now and send that snapshot to ``host``.

        This is the scheduler's ``replicate:HOST`` job.  It raises what
        :meth:`create_snapshot` and then :meth:`send_snapshot` raise.
        """
        return self.send_snapshot(self.create_snapshot(volume).name, host)

    @abc.abstractmethod
    def sync_volume(self, volume: str, hosts: Sequence[str]) -> SyncResult:
        """Pull newer data of ``volume`` from each peer's volume of the same name.

        A local snapshot is taken first; files missing here or newer on a peer
        are copied in; nothing is ever deleted.  Per-peer failures are reported
        in the result (and the scheduler must count ``not result.ok`` as a failure).

        :param hosts: one or more peers, ``[user@]host[:port]`` (a str is one).
        :returns: the backup snapshot taken and each peer's outcome.
        :raises InvalidName: for a bad ``volume`` or host.
        :raises InvalidArgument: when no host is given.
        :raises NotFound: when there is no such volume.
        """

    # -- retention ---------------------------------------------------------------

    @abc.abstractmethod
    def purge(
        self,
        volume: str,
        pattern: str,
        dry_run: bool = False,
        now: dt.datetime | None = None,
    ) -> PurgeResult:
        """Delete ``volume``'s local snapshots the retention ``pattern`` condemns.

        Pattern language and meaning: :mod:`stowkit.corelib.retention`.  Never deletes
        the volume's newest snapshot nor the newest snapshot sent to each peer
        (the parent of the next incremental send).  Takes the volume's lock
        and waits for a send of it to end.

        :param dry_run: decide, and delete nothing.
        :param now: the time ages are counted from (default: now).
        :returns: what was (or would be) deleted, kept, and kept although condemned.
        :raises InvalidName: for a bad ``volume``.
        :raises InvalidArgument: for a bad pattern.
        :raises BackendUnavailable: when the backend fails.
        """
