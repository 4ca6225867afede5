"""Block devices made of fixed-size objects: BlockDevice, LockInfo and BlockStore.

A *device* is a named set of objects numbered from 0, each exactly
``object_size`` bytes, plus its settings (size, object size, format version)
stored with it.  Object ``i`` holds bytes ``[i * object_size, (i + 1) *
object_size)`` of the device.  An object never written, or deleted, reads as
zeros: :meth:`BlockStore.read_object` returns ``None`` for it (no allocation,
and callers such as the NBD block status can tell holes from data), and
:func:`zeros` gives the bytes when they are needed.

Layout shared by every backend (a Swift container, or a directory):

* ``disk.part/00000000`` ... ``disk.part/99999999``: the data objects, named
  as swiftnbd named them (8 decimal digits, so listing order is index order
  and a swiftnbd container is readable as is);
* ``stowkit.lock``: the lock object (JSON), see below;
* the settings: container metadata on Swift, ``device.json`` locally.

Locks.  One writer per device: :meth:`BlockStore.lock` creates the lock
object only if it does not exist (Swift ``If-None-Match: *``, ``O_EXCL``
locally), then re-reads it and keeps the lock only if its own token is
there.  Swift checks the condition when a PUT starts, so two PUTs that start
together can both succeed (the newer content stays); the re-read waits
``settle_seconds`` for such a rival to land, so exactly one taker wins.  The lock holds its owner
(label, host, pid, a random token) and a lease expiry; the holder calls
:meth:`BlockStore.renew` well within the lease.  An expired lock may be taken
over: exactly one taker wins a per-token "takeover" marker created the same
atomic way, re-checks that the stale lock is still the one it saw, replaces
it, and re-reads it to confirm.  A lock with no lease (``lease_seconds=None``,
what ``stowkit blockstore lock`` takes by hand) never goes stale.  Leases are
compared with the wall clock of whoever reads them, so hosts sharing a device
need roughly synchronised clocks (NTP), as with any lease.

Writers hold a :class:`Lease` (:meth:`BlockStore.lease`): it takes, confirms,
renews and releases the lock, and is the only path by which the NBD cache
and the whole-device copies store or delete a locked device's objects.

Thread safety: every backend must allow ``read_object``, ``write_object``,
``delete_object`` and ``list_objects`` from many threads at once (the NBD
cache uploads in parallel).  ``write_object`` returns only once the object is
durably stored; that is what an NBD FLUSH waits for.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from oslo_config import cfg

from stowkit.corelib import names
from stowkit.corelib.driver import Driver
from stowkit.corelib.errors import BackendUnavailable, InvalidArgument, Locked

LOG = logging.getLogger(__name__)

#: Version of the layout above, stored with each device.
FORMAT_VERSION = 1
#: Default object size: large enough that per-request overhead (one HTTP
#: round trip, an account/container lookup, an fsync on Swift) does not
#: dominate.  Measured on the harness Swift, 4 MiB objects move 2-3x the
#: bytes per second of 1 MiB ones; small scattered reads stay cheap because
#: the NBD cache fetches byte ranges (``read_range``).  Ceph RBD's default too.
DEFAULT_OBJECT_SIZE = 4 << 20
MIN_OBJECT_SIZE = 4 << 10
MAX_OBJECT_SIZE = 64 << 20
#: Object names have 8 digits; more objects would break listing order.
MAX_OBJECTS = 10**8
#: Lease of a server's lock when none is given; servers renew every third of it.
DEFAULT_LEASE = 60.0
#: renew() refuses a lease this close to its end (a taker may be at work).
RENEW_MARGIN = 1.0

OBJECT_PREFIX = "disk.part/"
LOCK_KEY = "stowkit.lock"
TAKEOVER_PREFIX = "stowkit.lock.takeover."
#: The record of what a writer could not store (see UnstoredRecord).
UNSTORED_KEY = "stowkit.unstored"


class BlockStoreCapability(enum.StrEnum):
    """Optional features a BlockStore may declare in ``capabilities``.

    Locking, sparse objects (absent reads as zeros), parallel object calls
    and durable writes are not capabilities: every BlockStore must provide
    them (see the module docstring), and the NBD server and the copies rely
    on them unconditionally.
    """

    #: read_range() fetches part of an object without reading all of it (a
    #: ranged GET, a pread); the NBD cache fetches byte ranges only from such stores
    RANGED_READ = "ranged_read"


def object_name(index: int) -> str:
    """The name of object ``index`` inside its device (container or directory)."""
    return f"{OBJECT_PREFIX}{index:08d}"


def object_index(name: str) -> int | None:
    """The index of a data object's name, None for anything else (the lock, settings)."""
    if not name.startswith(OBJECT_PREFIX):
        return None
    digits = name[len(OBJECT_PREFIX) :]
    if len(digits) != 8 or not digits.isdigit():
        return None
    return int(digits)


_ZEROS: dict[int, bytes] = {}


def zeros(size: int) -> bytes:
    """``size`` zero bytes, shared (bytes are immutable) so holes cost nothing."""
    block = _ZEROS.get(size)
    if block is None:
        block = _ZEROS[size] = bytes(size)
    return block


def is_zeros(data: bytes | bytearray | memoryview) -> bool:
    """True when every byte is zero (such objects are deleted, never stored)."""
    return not any(data) if len(data) < 64 else data == zeros(len(data))


def default_object_size(size: int) -> int:
    """The object size used when none is given for a device of ``size`` bytes.

    DEFAULT_OBJECT_SIZE, or the largest smaller power of two that divides
    ``size`` (so ``--size 10M`` works without naming an object size), never
    below MIN_OBJECT_SIZE.  A size that no allowed object size divides gets
    the default, and check_geometry then says why it is refused.
    """
    object_size = DEFAULT_OBJECT_SIZE
    while object_size > MIN_OBJECT_SIZE and size % object_size:
        object_size //= 2
    return object_size if size > 0 and size % object_size == 0 else DEFAULT_OBJECT_SIZE


def check_geometry(size: int, object_size: int) -> None:
    """Raise InvalidArgument unless (size, object_size) make a valid device."""
    if object_size < MIN_OBJECT_SIZE or object_size > MAX_OBJECT_SIZE:
        raise InvalidArgument(
            f"invalid object size {object_size}: must be between "
            f"{MIN_OBJECT_SIZE // 1024} KiB and {MAX_OBJECT_SIZE >> 20} MiB"
        )
    if object_size & (object_size - 1):
        raise InvalidArgument(f"invalid object size {object_size}: must be a power of two")
    if size <= 0:
        raise InvalidArgument(f"invalid device size {size}: must be positive")
    if size % object_size:
        lower = size // object_size * object_size
        near = f"{lower} or {lower + object_size}" if lower else f"{object_size}"
        raise InvalidArgument(
            f"invalid device size {size}: must be a multiple of the object size "
            f"{object_size} (e.g. {near})"
        )
    if size // object_size > MAX_OBJECTS:
        raise InvalidArgument(
            f"invalid device size {size}: more than {MAX_OBJECTS} objects; use a larger object size"
        )


@dataclasses.dataclass(frozen=True)
class LockInfo:
    """Who holds a device's lock, and until when."""

    owner: str  # what took it: "nbd-server", "stowkit blockstore lock", ...
    host: str
    pid: int
    token: str  # random; identifies this very lock, e.g. for renew/unlock
    acquired: float  # epoch seconds
    expires: float | None  # epoch seconds; None: no lease, never stale
    #: When this lock replaced a stale one: the lock it replaced.
    taken_over: LockInfo | None = None
    #: Seconds the create of this lock object took (known to its creator only):
    #: a create slower than the backend's settle time is not trusted.
    create_seconds: float | None = None

    def expired(self, now: float | None = None) -> bool:
        return self.expires is not None and (now or time.time()) >= self.expires

    def describe(self) -> str:
        """One line for humans: 'nbd-server on host1 (pid 42) since ..., lease until ...'."""
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.acquired))
        text = f"{self.owner or 'unknown'} on {self.host} (pid {self.pid}) since {since}"
        if self.expires is None:
            return text + ", no lease"
        until = time.strftime("%H:%M:%S", time.localtime(self.expires))
        if self.expired():
            return text + f", lease expired at {until}"
        return text + f", lease until {until}"

    def to_json(self) -> bytes:
        fields = dataclasses.asdict(self)
        fields.pop("taken_over")
        fields.pop("create_seconds")
        return json.dumps(fields, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> LockInfo:
        """Parse a lock object; garbage gives an 'unknown' lock that never goes stale."""
        try:
            fields = json.loads(data)
            return cls(
                owner=str(fields["owner"]),
                host=str(fields["host"]),
                pid=int(fields["pid"]),
                token=str(fields["token"]),
                acquired=float(fields["acquired"]),
                expires=None if fields["expires"] is None else float(fields["expires"]),
            )
        except (ValueError, KeyError, TypeError):
            # Someone wrote something else there; only a forced unlock removes it.
            return cls("unreadable lock object", "?", 0, "?", 0.0, None)

    @classmethod
    def new(cls, owner: str, lease_seconds: float | None) -> LockInfo:
        now = time.time()
        return cls(
            owner=owner,
            host=socket.gethostname(),
            pid=os.getpid(),
            token=secrets.token_hex(16),
            acquired=now,
            expires=None if lease_seconds is None else now + lease_seconds,
        )


def ranges(indices: Sequence[int]) -> str:
    """'3, 7-9' for [3, 7, 8, 9] (sorted)."""
    runs: list[list[int]] = []
    for i in sorted(indices):
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


@dataclasses.dataclass(frozen=True)
class UnstoredRecord:
    """What a writer of a device could not store, and why.

    Written by a Lease when its holder gives up with data it could not store
    (the lease was lost, or the backend stayed down through the shutdown):
    into the device (control object ``stowkit.unstored``) only while the lease
    is still ours, otherwise into a local state file (a writer that lost the
    device must not write into it).  ``blockstore show`` prints the newest.
    """

    device: str
    objects: tuple[int, ...]
    bytes: int
    at: float  # epoch seconds
    by: str  # the writer: owner, host, pid
    reason: str
    #: Where it was read from: "device", or the local file's path (not stored).
    where: str = ""

    def to_json(self) -> bytes:
        fields = dataclasses.asdict(self)
        fields.pop("where")
        fields["objects"] = ranges(self.objects)
        return json.dumps(fields, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> UnstoredRecord | None:
        try:
            fields = json.loads(data)
            objects: list[int] = []
            for part in str(fields["objects"]).split(","):
                if part.strip():
                    first, _, last = part.strip().partition("-")
                    objects.extend(range(int(first), int(last or first) + 1))
            return cls(
                device=str(fields["device"]),
                objects=tuple(objects),
                bytes=int(fields["bytes"]),
                at=float(fields["at"]),
                by=str(fields["by"]),
                reason=str(fields["reason"]),
                where=where,
            )
        except (ValueError, KeyError, TypeError):
            return None


class StorageFull(BackendUnavailable):
    """The backend is out of space, or the account is over its quota (NBD: ENOSPC)."""


class StorageDenied(BackendUnavailable):
    """The backend refused the change: permissions, read-only storage (NBD: EPERM)."""


class DeviceLocked(Locked):
    """The device is locked by someone else; ``holder`` says who."""

    def __init__(self, message: str, holder: LockInfo | None = None) -> None:
        super().__init__(message)
        self.holder = holder


@dataclasses.dataclass(frozen=True)
class BlockDevice:
    name: str
    size: int
    object_size: int
    format_version: int = FORMAT_VERSION
    #: Who holds the lock, if anyone (always filled by get_device/list_devices).
    lock: LockInfo | None = None
    #: How many objects are stored (not holes); only with ``details=True``.
    objects_stored: int | None = None

    @property
    def object_count(self) -> int:
        return -(-self.size // self.object_size)

    @property
    def locked_by(self) -> str | None:
        return self.lock.describe() if self.lock else None


class BlockStore(Driver):
    """A store of devices; each device is a set of objects numbered from 0.

    Subclasses implement the device and object methods, plus four small
    primitives on "control objects" (the lock and its takeover markers):
    the lock protocol itself is written once, here.
    """

    # -- devices -------------------------------------------------------------

    @abc.abstractmethod
    def create_device(
        self, name: str, size: int, object_size: int = DEFAULT_OBJECT_SIZE
    ) -> BlockDevice:
        """Create an empty device (all zeros).  AlreadyExists when the name is taken."""

    @abc.abstractmethod
    def get_device(self, name: str, details: bool = False) -> BlockDevice:
        """The device with its lock; ``details`` also counts stored objects.  NotFound."""

    @abc.abstractmethod
    def list_devices(self, details: bool = False) -> Sequence[BlockDevice]:
        """Every device, sorted by name."""

    @abc.abstractmethod
    def _destroy_device(self, name: str) -> None:
        """Remove every object, the lock and the settings, then the device itself."""

    def delete_device(self, name: str, force: bool = False) -> LockInfo | None:
        """Delete a device: objects first, then the container/directory.

        Refused with DeviceLocked while somebody holds the lock, unless
        ``force``; returns the lock that was broken, if any.
        """
        self.get_device(name)
        holder = self.get_lock(name)
        if holder is not None and not force:
            raise DeviceLocked(
                f"device {name} is locked by {holder.describe()}; "
                "unlock it first or delete with --force",
                holder,
            )
        self._destroy_device(name)
        return holder

    # -- objects -------------------------------------------------------------
    # These do not check that the device exists (that would cost a request
    # per object); callers get_device() once first.

    @abc.abstractmethod
    def read_object(self, device: str, index: int) -> bytes | None:
        """The object's ``object_size`` bytes, or None when it is not stored (zeros)."""

    def read_range(self, device: str, index: int, start: int, length: int) -> bytes | None:
        """``length`` bytes of object ``index`` from ``start``; None when not stored.

        Backends that can fetch part of an object declare ``RANGED_READ``; the
        NBD cache then serves scattered small reads without moving whole
        objects.  This fallback reads the object and slices it.
        """
        data = self.read_object(device, index)
        if data is None:
            return None
        part = data[start : start + length]
        return part + bytes(length - len(part)) if len(part) < length else part

    @abc.abstractmethod
    def write_object(self, device: str, index: int, data: bytes) -> None:
        """Store object ``index`` (exactly ``object_size`` bytes) durably, replacing it.

        Callers delete all-zero objects instead of writing them (see is_zeros).
        """

    def upload_body(self, data: bytes | bytearray | memoryview) -> bytes:
        """An immutable copy of ``data``, in the form :meth:`write_object` sends as is.

        Callers holding a buffer they keep changing (the NBD cache) snapshot it
        with this: one copy, which a backend that wraps bodies (Swift's
        resendable PUT body) then need not copy again.
        """
        return bytes(data)

    def lend_body(self, data: bytearray) -> object | None:
        """A body for :meth:`write_object` that shares ``data``'s memory (no copy),
        or None when this backend cannot send from a shared buffer.

        The caller must not change ``data`` until write_object returned (the
        NBD cache copies it on write meanwhile).
        """
        return None

    @abc.abstractmethod
    def delete_object(self, device: str, index: int) -> None:
        """Forget object ``index`` (it reads as zeros); no error when not stored."""

    @abc.abstractmethod
    def list_objects(self, device: str) -> Iterator[int]:
        """Indexes of the stored objects, ascending."""

    def _geometry(self, device: str) -> tuple[int, int]:
        """(size, object_size) of ``device``, remembered: settings never change.

        One lookup however many threads ask at once: an export's first
        uploads all start together, and each lookup is a request that queues
        behind theirs.
        """
        cache: dict[str, tuple[int, int]] = self.__dict__.setdefault("_geometry_cache", {})
        geometry = cache.get(device)
        if geometry is None:
            with self.__dict__.setdefault("_geometry_guard", threading.Lock()):
                geometry = cache.get(device)
                if geometry is None:
                    dev = self.get_device(device)
                    geometry = cache[device] = (dev.size, dev.object_size)
        return geometry

    def remember_geometry(self, device: BlockDevice) -> None:
        """Note the settings of a device just read, for its object calls to check against."""
        cache: dict[str, tuple[int, int]] = self.__dict__.setdefault("_geometry_cache", {})
        cache[device.name] = (device.size, device.object_size)

    def _forget_geometry(self, device: str) -> None:
        self.__dict__.get("_geometry_cache", {}).pop(device, None)

    def _check_object(self, device: str, index: int, data: bytes | None = None) -> None:
        """Validate an object call: name, index in range, data of the object size."""
        names.check_name(device, "device name")
        if not isinstance(index, int) or index < 0:
            raise InvalidArgument(f"invalid object index {index!r}")
        size, object_size = self._geometry(device)
        if index * object_size >= size:
            raise InvalidArgument(f"object {index} is past the end of device {device}")
        if data is not None and len(data) != object_size:
            raise InvalidArgument(
                f"object {index} of device {device}: {len(data)} bytes given, "
                f"the object size is {object_size}"
            )

    def _check_range(self, device: str, index: int, start: int, length: int) -> None:
        self._check_object(device, index)
        object_size = self._geometry(device)[1]
        if start < 0 or length <= 0 or start + length > object_size:
            raise InvalidArgument(
                f"invalid range {start}+{length} of object {index} (object size {object_size})"
            )

    # -- control objects (lock primitives) -------------------------------------

    @abc.abstractmethod
    def _control_get(self, device: str, key: str) -> bytes | None:
        """Content of control object ``key``, None when absent."""

    @abc.abstractmethod
    def _control_create(self, device: str, key: str, data: bytes) -> bool:
        """Atomically create ``key`` with ``data`` unless it exists; False if it did."""

    @abc.abstractmethod
    def _control_replace(self, device: str, key: str, data: bytes) -> None:
        """Atomically replace ``key`` (readers see the old or the new content)."""

    @abc.abstractmethod
    def _control_delete(self, device: str, key: str) -> None:
        """Delete ``key``; no error when absent."""

    # -- locks ---------------------------------------------------------------

    def get_lock(self, device: str) -> LockInfo | None:
        """Who holds the device's lock now (possibly stale), or None."""
        names.check_name(device, "device name")
        data = self._control_get(device, LOCK_KEY)
        return None if data is None else LockInfo.from_json(data)

    def lock(
        self, device: str, owner: str = "", lease_seconds: float | None = DEFAULT_LEASE
    ) -> LockInfo:
        """Take the device's exclusive lock; DeviceLocked (with ``holder``) when held.

        A lock whose lease expired is taken over: a warning is logged and the
        returned LockInfo's ``taken_over`` is the stale lock.
        """
        return self.confirm_lock(device, self.lock_unconfirmed(device, owner, lease_seconds))

    def lock_unconfirmed(
        self, device: str, owner: str = "", lease_seconds: float | None = DEFAULT_LEASE
    ) -> LockInfo:
        """Create the lock as :meth:`lock` does, without its final check.

        That check waits ``settle_seconds``.  A caller with useful work to do
        meanwhile (the NBD server takes writes into its cache but stores
        nothing) calls :meth:`confirm_lock` itself before changing the device.
        """
        self.get_device(device)
        mine = LockInfo.new(owner, lease_seconds)
        began = time.monotonic()
        for _attempt in range(5):
            created, seconds = self._timed_create(device, LOCK_KEY, mine)
            if created:
                # confirm_lock refuses it if the create was slow
                return dataclasses.replace(mine, create_seconds=seconds)
            holder = self.get_lock(device)
            if holder is None:
                continue  # released in between: try again
            if holder.token == mine.token:
                # Our create went through but its answer was lost and the
                # client retried: the lock is ours (if it was quick enough).
                return dataclasses.replace(mine, create_seconds=time.monotonic() - began)
            if not holder.expired():
                raise DeviceLocked(f"device {device} is locked by {holder.describe()}", holder)
            taken = self._take_over(device, holder, mine)
            if taken is not None:
                return taken
        raise DeviceLocked(f"device {device}: the lock keeps changing hands; try again")

    def _take_over(self, device: str, stale: LockInfo, mine: LockInfo) -> LockInfo | None:
        # Only the one taker that creates the marker for this stale token may
        # remove the stale lock, so two takers cannot each delete the other's
        # fresh lock.  The marker is left behind (it names a token that will
        # never be used again) and removed with the device.
        marker = TAKEOVER_PREFIX + stale.token
        if not self._control_create(device, marker, mine.to_json()):
            raise DeviceLocked(
                f"device {device}: someone else is taking over the stale lock of "
                f"{stale.describe()}",
                stale,
            )
        current = self.get_lock(device)
        if current is not None and (current.token, current.expires) != (stale.token, stale.expires):
            return None  # renewed, or released and re-taken meanwhile: start again
        self._control_delete(device, LOCK_KEY)
        created, seconds = self._timed_create(device, LOCK_KEY, mine)
        if not created:
            return None
        self._control_delete(device, marker)
        LOG.warning("device %s: took over the stale lock of %s", device, stale.describe())
        return dataclasses.replace(mine, taken_over=stale, create_seconds=seconds)

    def _slow_create(self, mine: LockInfo) -> bool:
        return (
            self.settle_seconds > 0
            and mine.create_seconds is not None
            and mine.create_seconds >= self.settle_seconds
        )

    def _drop_own(self, device: str, mine: LockInfo) -> None:
        """Remove our own lock object, if it is still there (never anyone else's)."""
        try:
            self.unlock(device, mine)
        except DeviceLocked:
            pass
        except Exception as err:
            LOG.warning("device %s: could not remove our untrusted lock: %s", device, err)

    def _timed_create(self, device: str, key: str, mine: LockInfo) -> tuple[bool, float]:
        """Create ``key`` holding ``mine``: (created, seconds the create took)."""
        started = time.monotonic()
        created = self._control_create(device, key, mine.to_json())
        return created, time.monotonic() - started

    #: Seconds a conditional create may take to settle.  Swift checks
    #: ``If-None-Match`` when a PUT starts, so two PUTs that start together
    #: can both succeed; the newer one's content is what stays.  Re-reading
    #: only after this delay lets every such rival land first, so exactly one
    #: creator finds its own token.  Zero where create is atomic (O_EXCL).
    settle_seconds: float = 0.0

    def _settle(self) -> None:
        if self.settle_seconds > 0:
            time.sleep(self.settle_seconds)

    def confirm_lock(self, device: str, mine: LockInfo) -> LockInfo:
        """``mine`` once it is sure the lock is ours; DeviceLocked if a rival won.

        A create that took ``settle_seconds`` or longer is not trusted, even
        when the re-read finds our token: while it was in flight a rival's
        create may have started after ours, landed, passed its own re-read
        and be writing now; ours, landing later (and newer), would then make
        two holders.  (For two winners the later-landing create must take
        longer than the settle time: a rival that landed first re-reads
        ``settle_seconds`` after its answer, when every create that started
        before it landed has landed too, unless that create is this slow.)
        Our lock object is then removed: the device is left unlocked, and a
        rival whose lock ours replaced stops before its next write (a Lease
        re-reads the lock before storing).  Nobody keeps a lock won that way,
        so of two racing takers at most one ever stores anything; a caller
        may simply try again.
        """
        if self._slow_create(mine):
            self._drop_own(device, mine)
            raise DeviceLocked(
                f"device {device}: creating the lock took {mine.create_seconds:.2f} s, "
                f"longer than the settle time ({self.settle_seconds:g} s): a rival may have "
                "taken the device meanwhile, so it is not ours; try again",
                None,
            )
        self._settle()
        current = self.get_lock(device)
        if current is None or current.token != mine.token:
            who = current.describe() if current else "nobody"
            raise DeviceLocked(f"device {device}: lost the lock race to {who}", current)
        return mine

    def renew(
        self, device: str, lock: LockInfo, lease_seconds: float | None = DEFAULT_LEASE
    ) -> LockInfo:
        """Extend ``lock``'s lease; DeviceLocked when it is no longer ours.

        A server that gets DeviceLocked here has lost its lock (broken by hand
        or taken over after its lease ran out) and must stop writing.
        """
        current = self.get_lock(device)
        if current is None or current.token != lock.token:
            who = current.describe() if current else "nobody (it was unlocked)"
            raise DeviceLocked(
                f"device {device}: our lock is gone; it is now held by {who}", current
            )
        now = time.time()
        # Past (or about to pass) its lease, a taker may be replacing it right
        # now: overwriting could clobber the taker's lock, so give up instead;
        # the caller may lock() again, which takes over properly.
        if current.expires is not None and current.expires - RENEW_MARGIN <= now:
            raise DeviceLocked(f"device {device}: our lease expired before it was renewed", current)
        renewed = dataclasses.replace(
            lock,
            expires=None if lease_seconds is None else now + lease_seconds,
            taken_over=None,
        )
        self._control_replace(device, LOCK_KEY, renewed.to_json())
        return renewed

    def unlock(
        self,
        device: str,
        lock: LockInfo | None = None,
        force: bool = False,
        expected: LockInfo | None = None,
    ) -> LockInfo | None:
        """Release ``lock`` (ours), or break the lock of ``expected`` (someone else's).

        Returns the lock that was removed (None when there was none).  A lock
        held by anyone but ``lock``/``expected`` is left alone and raises
        DeviceLocked (with its ``holder``): whoever breaks a lock must say
        whose lock it means to break, so that a lock taken meanwhile by a
        third party survives.  ``force`` without ``expected`` breaks
        whatever lock there is at this moment (tests, emergencies).
        """
        current = self.get_lock(device)
        if current is None:
            self.get_device(device)  # NotFound beats "not locked"
            return None
        wanted = lock or expected
        if wanted is not None and current.token != wanted.token:
            raise DeviceLocked(
                f"device {device} is now locked by {current.describe()}, "
                f"not by {wanted.describe()}; left alone",
                current,
            )
        if wanted is None and not force:
            raise DeviceLocked(
                f"device {device} is locked by {current.describe()}; use --force to break it",
                current,
            )
        self._control_delete(device, LOCK_KEY)
        if lock is None:
            LOG.info("device %s: broke the lock of %s", device, current.describe())
        return current

    # -- what writers could not store ---------------------------------------------

    def record_name(self, device: str) -> str:
        """What names ``device`` in this host's local state (a container, a directory)."""
        return device

    def local_record_path(self, device: str) -> str | None:
        """The local state file of ``device``'s unstored record; None without a state_dir."""
        try:
            state_dir = self.conf.state_dir
        except (cfg.NoSuchOptError, AttributeError):  # a bare ConfigOpts (tests, embedding)
            return None
        name = f"{self.group}.{self.record_name(device)}.json".replace(os.sep, "_")
        return os.path.join(state_dir, "blockstore-unstored", name)

    def unstored_records(self, device: str) -> list[UnstoredRecord]:
        """The records of what writers could not store: the device's, then this host's."""
        found = []
        raw = self._control_get(device, UNSTORED_KEY)
        record = None if raw is None else UnstoredRecord.from_json(raw, "device")
        if record is not None:
            found.append(record)
        path = self.local_record_path(device)
        if path is not None:
            try:
                with open(path, "rb") as f:
                    record = UnstoredRecord.from_json(f.read(), path)
            except FileNotFoundError:
                record = None
            if record is not None:
                found.append(record)
        return found

    def write_local_record(self, record: UnstoredRecord) -> str:
        """Write ``record`` into this host's state file (atomically); returns its path."""
        path = self.local_record_path(record.device)
        if path is None:
            raise BackendUnavailable(
                f"device {record.device}: nowhere to record what was not stored (no state_dir)"
            )
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temp = f"{path}.{os.getpid()}.tmp"
        with open(temp, "wb") as f:
            f.write(record.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
        return path

    def forget_local_record(self, device: str) -> None:
        path = self.local_record_path(device)
        if path is not None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def lease(
        self, device: str, owner: str = "", lease_seconds: float | None = DEFAULT_LEASE
    ) -> Lease:
        """A :class:`Lease` on ``device`` for ``owner``, not yet acquired."""
        return Lease(self, device, owner, lease_seconds)

    def held_lease(self, device: str) -> Lease | None:
        """The lease this process holds on ``device`` through this store, if any."""
        with _LEASES_GUARD:
            return self.__dict__.get("_leases", {}).get(device)


_LEASES_GUARD = threading.Lock()


class LeaseLost(DeviceLocked):
    """The lease is gone (broken, taken over, expired unrenewed): stop writing."""


class Lease:
    """The one answer to "may I write to this device now?".

    Created from a store for a device and an owner (:meth:`BlockStore.lease`),
    a lease takes the device lock (:meth:`acquire`), confirms it
    (:meth:`confirm`), renews it from a thread of its own (:meth:`start`),
    and releases it (:meth:`release`).  It is also the only path by which
    the NBD cache and the whole-device copies store or delete a locked
    device's objects: :meth:`write_object` and :meth:`delete_object` check
    the lease before every call and refuse with :class:`LeaseLost` once it
    is lost.

    States: ``new`` -> ``unconfirmed`` (created, its re-read pending) ->
    ``valid`` -> ``released``; or ``lost`` from ``unconfirmed``/``valid``,
    which is final.  A valid lease becomes lost when a renewal finds the
    lock is no longer ours (the rival is logged), or when its lease time
    runs out (measured on this host's monotonic clock from the start of the
    last successful renewal) because renewals kept failing: a taker may be
    at work by then.  ``on_lost`` callbacks run once, in the thread that
    noticed.

    Renewal, confirmation and release are serialised by one lock: a renewal
    already talking to the backend when :meth:`release` is called finishes
    first, and none starts after, so a renewal's PUT can never bring the
    lock back after the release removed it.
    """

    def __init__(
        self,
        store: BlockStore,
        device: str,
        owner: str = "",
        lease_seconds: float | None = DEFAULT_LEASE,
    ) -> None:
        self.store = store
        self.device = device
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.info: LockInfo | None = None
        self.state = "new"
        self.reason: str | None = None  # why it was lost
        self.rival: LockInfo | None = None  # who holds the lock once it was lost
        #: Objects a write or delete was refused for after the loss.
        self.refused: set[int] = set()
        self._io = threading.RLock()  # serialises lock, confirm, renew, release
        self._state_lock = threading.Lock()  # state changes only: never held over I/O
        self.confirmed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._valid_until = 0.0  # time.monotonic(); None lease: inf
        self._started = 0.0  # monotonic time of the lock's creation
        self._on_lost: list[Callable[[LeaseLost], None]] = []
        #: A write may start only this soon after the lock was last read as
        #: ours (see _verify); half the settle time a rival waits after taking it.
        self.verify_every = store.settle_seconds / 2
        self._seen = float("-inf")  # monotonic start of the last read that found it ours
        #: (monotonic time, error) of the last re-read that failed
        self._verify_failed: tuple[float, BaseException | None] = (float("-inf"), None)
        self._verify_lock = threading.Lock()

    # -- state -------------------------------------------------------------------
    @property
    def lost(self) -> bool:
        self._check_time()
        return self.state == "lost"

    @property
    def valid(self) -> bool:
        """True while writes are allowed: confirmed, not lost, lease not run out."""
        self._check_time()
        return self.state == "valid"

    def on_lost(self, callback: Callable[[LeaseLost], None]) -> None:
        """Call ``callback(error)`` when the lease is lost (at once if it already is)."""
        with self._state_lock:
            if self.state != "lost":
                self._on_lost.append(callback)
                return
        callback(self.error())

    def error(self) -> LeaseLost:
        return LeaseLost(
            f"device {self.device}: the lock is lost, nothing more is stored: {self.reason}",
            self.rival,
        )

    def check(self) -> None:
        """Raise unless writing is allowed now: LeaseLost, or DeviceLocked before confirmation."""
        self._check_time()
        if self.state == "valid":
            return
        if self.state == "lost":
            raise self.error()
        raise DeviceLocked(f"device {self.device}: the lock is {self.state}, not confirmed")

    def _check_time(self) -> None:
        if self.state == "valid" and time.monotonic() >= self._valid_until:
            self._lose("the lease ran out before it could be renewed", None)

    def _lose(self, reason: str, rival: LockInfo | None) -> None:
        with self._state_lock:
            if self.state not in ("unconfirmed", "valid"):
                return
            self.state = "lost"
            self.reason = reason
            self.rival = rival
            callbacks, self._on_lost = self._on_lost, []
        self._stop.set()
        LOG.error(
            "device %s: lost the lock (%s); holder now: %s; nothing more is stored",
            self.device,
            reason,
            rival.describe() if rival else "none known",
        )
        error = self.error()
        for callback in callbacks:
            try:
                callback(error)
            except Exception:
                LOG.exception("device %s: lease-lost callback failed", self.device)

    def _extend(self, since: float) -> None:
        if self.lease_seconds is None:
            self._valid_until = float("inf")
        else:
            self._valid_until = since + self.lease_seconds - RENEW_MARGIN

    # -- life cycle -----------------------------------------------------------------
    def acquire(
        self,
        confirm: bool = True,
        breakable: Callable[[LockInfo], bool] | None = None,
    ) -> Lease:
        """Take the lock; DeviceLocked when held.  ``confirm=False`` leaves the re-read to
        :meth:`confirm`.  A holder for which ``breakable(holder)`` is true (a dead server
        of this host) has its lock broken, naming it, and the lock is taken again."""
        with self._io:
            if self.state != "new":
                raise RuntimeError(f"lease of {self.device} is already {self.state}")
            self._started = time.monotonic()
            try:
                info = self.store.lock_unconfirmed(self.device, self.owner, self.lease_seconds)
            except DeviceLocked as err:
                holder = err.holder
                if holder is None or breakable is None or not breakable(holder):
                    raise
                LOG.warning(
                    "device %s: breaking the lock of a dead holder: %s",
                    self.device,
                    holder.describe(),
                )
                # Names the dead holder: a lock taken meanwhile by anyone else stays.
                self.store.unlock(self.device, expected=holder)
                info = self.store.lock_unconfirmed(self.device, self.owner, self.lease_seconds)
            self.info = info
            self.state = "unconfirmed"
            with _LEASES_GUARD:
                self.store.__dict__.setdefault("_leases", {})[self.device] = self
        if confirm:
            self.confirm()
        return self

    def confirm(self) -> LockInfo:
        """Make sure the lock is ours (the backend's re-read); lost if a rival won."""
        with self._io:
            if self.state == "valid":
                assert self.info is not None
                return self.info
            if self.state != "unconfirmed":
                raise self.error() if self.state == "lost" else RuntimeError(self.state)
            assert self.info is not None
            try:
                self.store.confirm_lock(self.device, self.info)
            except DeviceLocked as err:
                self._lose(f"lost the lock race: {err}", err.holder)
                raise self.error() from None
            except Exception as err:
                # Unsure is not ours.
                self._lose(f"could not confirm the lock: {err}", None)
                raise self.error() from None
            self._extend(self._started)
            with self._state_lock:
                if self.state != "unconfirmed":
                    raise self.error()
                self.confirmed = True
                self.state = "valid"
            return self.info

    def start(self, every: float | None = None) -> Lease:
        """Renew in a background thread every ``every`` seconds (a third of the lease)."""
        if self.lease_seconds is None or self._thread is not None:
            return self
        interval = every if every is not None else max(self.lease_seconds / 3, 0.05)
        self._thread = threading.Thread(
            target=self._renew_loop, args=(interval,), name=f"lease-{self.device}", daemon=True
        )
        self._thread.start()
        return self

    def _renew_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.renew()

    def renew(self) -> bool:
        """One renewal; False when it failed (the lease may then be lost)."""
        with self._io:
            if self._stop.is_set() or self.state != "valid":
                return False
            assert self.info is not None
            since = time.monotonic()
            try:
                self.info = self.store.renew(self.device, self.info, self.lease_seconds)
            except DeviceLocked as err:
                self._lose(str(err), err.holder)
                return False
            except Exception as err:
                LOG.warning("device %s: could not renew the lock: %s", self.device, err)
                self._check_time()
                return False
            self._extend(since)
            self._seen = max(self._seen, since)
            return True

    def release(self) -> LockInfo | None:
        """Stop renewing and remove our lock (never anyone else's).  Idempotent."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._io:
            with self._state_lock:
                state = self.state
                if state in ("unconfirmed", "valid"):
                    self.state = "released"
            with _LEASES_GUARD:
                leases = self.store.__dict__.get("_leases", {})
                if leases.get(self.device) is self:
                    del leases[self.device]
            if state == "released" or self.info is None:
                return None
            # Lost too: the lease may have run out here (a stall) while the lock
            # is still ours; unlock() names our token, so a rival's stays.
            try:
                removed = self.store.unlock(self.device, self.info)
            except DeviceLocked as err:
                removed, rival = None, err.holder
            else:
                rival = None
            if removed is None and state == "valid":
                # Gone before we let it go: broken by hand, or taken over.
                who = rival.describe() if rival else "nobody (it was unlocked)"
                with self._state_lock:
                    self.state = "lost"
                    self.reason = f"our lock is gone; it is now held by {who}"
                    self.rival = rival
                LOG.error("device %s: %s", self.device, self.reason)
            return removed

    # -- the only way to change a locked device ------------------------------------------
    def write_object(self, index: int, data: bytes) -> None:
        self._guarded(index)
        self.store.write_object(self.device, index, data)

    def delete_object(self, index: int) -> None:
        self._guarded(index)
        self.store.delete_object(self.device, index)

    def _guarded(self, index: int) -> None:
        try:
            self.check()
            self._verify()
        except LeaseLost:
            self.refused.add(index)
            raise

    def record_unstored(
        self, objects: Sequence[int], nbytes: int, reason: str, local_only: bool = False
    ) -> str:
        """Record that ``objects`` (``nbytes``) could not be stored; returns where.

        Into the device while the lease is ours (re-read just before), else
        (lost, released, the backend refuses, or ``local_only``: it is known
        to be down) into this host's state file.
        """
        assert self.info is not None
        record = UnstoredRecord(
            self.device,
            tuple(sorted(objects)),
            nbytes,
            time.time(),
            f"{self.info.owner} on {self.info.host} (pid {self.info.pid})",
            reason,
        )
        try:
            if local_only:
                raise BackendUnavailable("the backend is failing")
            self.check()
            self._verify(force=True)
            self.store._control_replace(self.device, UNSTORED_KEY, record.to_json())
            return "device"
        except Exception as err:
            LOG.info("device %s: recording what was not stored locally: %s", self.device, err)
        return self.store.write_local_record(record)

    def clear_unstored(self) -> None:
        """Forget earlier records (the device was rewritten whole under this lease)."""
        self.check()
        self._verify(force=True)
        self.store._control_delete(self.device, UNSTORED_KEY)
        self.store.forget_local_record(self.device)

    def verify(self) -> None:
        """Re-read the lock now: LeaseLost unless it is still ours (a lease held
        idle for a while, before it is used again)."""
        self.check()
        self._verify(force=True)

    def _verify(self, force: bool = False) -> None:
        """Re-read the lock unless it was read as ours less than ``verify_every`` ago.

        Renewals alone would leave a lock broken by hand (or taken by a rival
        that did not wait for the lease) in use until the next renewal, a
        third of the lease later.  A rival starts writing only once its lock
        settled (``settle_seconds`` after its create); our writes start at
        most ``verify_every`` (half that) after a read that found the lock
        ours, so they end before the rival begins.  One read serves every
        writer of that moment; a read that fails fails the write (retried
        like any failed upload).
        """
        age = time.monotonic() - self._seen
        if not force and age < self.verify_every / 4:
            return
        if not force and age < self.verify_every:
            # Read ahead: the last read still covers this write, so only the
            # writer that gets the read lock re-reads now; the others go on
            # instead of all stalling behind one GET once verify_every runs out.
            # Early (a quarter in): under load a small GET queued behind the
            # PUTs takes most of verify_every.
            if not self._verify_lock.acquire(blocking=False):
                return
            try:
                self._reread()
            except LeaseLost:
                raise
            except Exception:
                pass  # still covered; the read is retried, blocking, once it is not
            finally:
                self._verify_lock.release()
            self.check()
            return
        waiting = time.monotonic()
        with self._verify_lock:
            if not force and time.monotonic() - self._seen < self.verify_every:
                return  # another writer read it meanwhile
            failed_at, error = self._verify_failed
            if not force and failed_at >= waiting and error is not None:
                # Another writer's read failed while we waited: so would ours.
                # (Each retrying in turn would queue every worker thread behind
                # one failing request after another on a backend that is down.)
                raise error
            self._reread()
        self.check()

    def _reread(self) -> None:
        """Read the lock (holding ``_verify_lock``): ours, or the lease is lost."""
        assert self.info is not None
        since = time.monotonic()
        try:
            current = self.store.get_lock(self.device)
        except Exception as err:
            self._verify_failed = (time.monotonic(), err)
            raise
        if current is None or current.token != self.info.token:
            who = current.describe() if current else "nobody (it was unlocked)"
            self._lose(f"our lock is gone; it is now held by {who}", current)
            raise self.error()
        self._seen = max(self._seen, since)

    def __enter__(self) -> Lease:
        if self.state == "new":
            self.acquire()
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.release()


__all__ = [
    "BlockDevice",
    "BlockStore",
    "BlockStoreCapability",
    "DEFAULT_LEASE",
    "DEFAULT_OBJECT_SIZE",
    "DeviceLocked",
    "FORMAT_VERSION",
    "Lease",
    "LeaseLost",
    "LockInfo",
    "StorageDenied",
    "StorageFull",
    "UnstoredRecord",
    "check_geometry",
    "is_zeros",
    "object_index",
    "object_name",
    "zeros",
]
