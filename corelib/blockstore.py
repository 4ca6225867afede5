"""Block devices made of fixed-size objects: BlockDevice and the BlockStore contract.

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
* ``stowkit.lock`` (LOCK_KEY): the lock object (JSON), see :mod:`stowkit.corelib.blocklock`;
* ``stowkit.unstored`` (UNSTORED_KEY): what a writer could not store, see
  :mod:`stowkit.corelib.blockunstored`;
* the settings: container metadata on Swift, ``device.json`` locally.

This module is storage only.  The device lock (its record, protocol and
rules) is :mod:`stowkit.corelib.blocklock`'s, the writer's side of it
(:class:`~stowkit.corelib.blocklease.Lease`) :mod:`stowkit.corelib.blocklease`'s,
and the record of what a writer could not store
:mod:`stowkit.corelib.blockunstored`'s.  :class:`BlockStore` has no lock
method: the lock layer sits above the storage interface and is called with the
store as its first argument (``blocklock.take(store, device, owner)``,
``blocklease.Lease(store, device, owner)``).

Thread safety: every backend must allow ``read_object``, ``write_object``,
``delete_object`` and ``list_objects`` from many threads at once (the NBD
cache uploads in parallel).  ``write_object`` returns only once the object is
durably stored; that is what an NBD FLUSH waits for.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence

from stowkit.corelib import blocklock, names
from stowkit.corelib.blocklock import DeviceLocked, LockInfo
from stowkit.corelib.driver import Driver
from stowkit.corelib.errors import BackendUnavailable, InvalidArgument

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
OBJECT_PREFIX = "disk.part/"


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


class StorageFull(BackendUnavailable):
    """The backend is out of space, or the account is over its quota (NBD: ENOSPC)."""


class StorageDenied(BackendUnavailable):
    """The backend refused the change: permissions, read-only storage (NBD: EPERM)."""


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


class _Geometries:
    """(size, object_size) of the devices a store was asked about: settings never change.

    One lookup however many threads ask at once: an export's first uploads
    all start together, and each lookup is a request that queues behind theirs.
    """

    def __init__(self) -> None:
        self._known: dict[str, tuple[int, int]] = {}
        self._guard = threading.Lock()

    def get(self, device: str, lookup: Callable[[str], BlockDevice]) -> tuple[int, int]:
        geometry = self._known.get(device)
        if geometry is None:
            with self._guard:
                geometry = self._known.get(device)
                if geometry is None:
                    dev = lookup(device)
                    geometry = self._known[device] = (dev.size, dev.object_size)
        return geometry

    def remember(self, device: BlockDevice) -> None:
        self._known[device.name] = (device.size, device.object_size)

    def forget(self, device: str) -> None:
        self._known.pop(device, None)


class _PerStore:
    """A descriptor giving each store its own ``factory()`` object, made on first use.

    Also for stores built without ``__init__`` (``__new__`` in tests), and
    outside the store's attributes, which backends own.
    """

    def __init__(self, factory: Callable[[], _Geometries]) -> None:
        self._factory = factory
        self._made: weakref.WeakKeyDictionary[BlockStore, _Geometries] = weakref.WeakKeyDictionary()
        self._guard = threading.Lock()

    def __get__(self, store: BlockStore | None, owner: type | None = None) -> _Geometries:
        if store is None:
            raise AttributeError("per-store: read it from a store")
        with self._guard:
            made = self._made.get(store)
            if made is None:
                made = self._made[store] = self._factory()
            return made


class BlockStore(Driver):
    """A store of devices; each device is a set of objects numbered from 0.

    The public methods are fixed: each checks its arguments (device names,
    object indexes within the device, data of the object size, a valid
    geometry) and then calls the backend's primitive, so no backend can skip
    a check.  A backend implements:

    * devices: :meth:`_create_device`, :meth:`_get_device`,
      :meth:`list_devices`, :meth:`_destroy_device`;
    * objects: :meth:`_read_object`, :meth:`_write_object`,
      :meth:`_delete_object`, :meth:`_list_objects`, optionally
      :meth:`_read_range` (with ``RANGED_READ``), :meth:`upload_body` and
      :meth:`lend_body`;
    * control objects, which the lock protocol (:mod:`~stowkit.corelib.blocklock`)
      and the record of unstored objects are written over: :meth:`_control_get`,
      :meth:`_control_create`, :meth:`_control_replace`, :meth:`_control_delete`,
      and ``settle_seconds`` when its atomic create needs time to settle.

    Errors are those of :mod:`stowkit.corelib.errors`: NotFound,
    AlreadyExists, InvalidArgument, Conflict, DeviceLocked (a Locked), and
    BackendUnavailable with its StorageFull and StorageDenied for a backend
    failing, full or refusing.

    Life cycle: the registry builds a store from its configuration group
    (``Driver.__init__``); it then serves any number of threads, each call
    standing alone (a store holds no per-device session: devices are looked
    up once and their geometry remembered, see :meth:`remember_geometry`);
    long-running front ends call :meth:`close` at the end.  A writer of a
    device holds its lock through a :meth:`lease` for as long as it writes.
    """

    _geometries = _PerStore(_Geometries)

    # -- devices -------------------------------------------------------------

    def create_device(
        self, name: str, size: int, object_size: int = DEFAULT_OBJECT_SIZE
    ) -> BlockDevice:
        """Create device ``name``, all zeros, of ``size`` bytes in ``object_size`` objects.

        :returns: the new device (unlocked).
        :raises InvalidArgument: a bad name, or a geometry :func:`check_geometry` refuses.
        :raises AlreadyExists: the name is taken (also by something that is not a device).
        :raises Conflict: the backend cannot tell whether this or a concurrent setup made it.
        :raises BackendUnavailable: the backend failed (StorageFull, StorageDenied).
        """
        names.check_name(name, "device name")
        check_geometry(size, object_size)
        try:
            return self._create_device(name, size, object_size)
        finally:
            self._geometries.forget(name)

    @abc.abstractmethod
    def _create_device(self, name: str, size: int, object_size: int) -> BlockDevice:
        """Create the device (name and geometry checked); AlreadyExists when taken."""

    def get_device(self, name: str, details: bool = False) -> BlockDevice:
        """The device ``name``, with its lock (``lock``, None when unlocked).

        :param details: also count the stored objects (``objects_stored``; a listing).
        :raises InvalidArgument: a bad name.
        :raises NotFound: there is no such device.
        :raises BackendUnavailable: the backend failed.
        """
        names.check_name(name, "device name")
        return self._get_device(name, details)

    @abc.abstractmethod
    def _get_device(self, name: str, details: bool) -> BlockDevice:
        """The device with ``lock=blocklock.read_lock(self, name)``; NotFound."""

    @abc.abstractmethod
    def list_devices(self, details: bool = False) -> Sequence[BlockDevice]:
        """Every device, sorted by name, each with its lock (``details`` as in get_device).

        :raises BackendUnavailable: the backend failed.
        """

    @abc.abstractmethod
    def _destroy_device(self, name: str) -> None:
        """Remove every object, the lock and the settings, then the device itself."""

    def delete_device(self, name: str, force: bool = False) -> LockInfo | None:
        """Delete a device: objects first, then the container/directory.

        :param force: delete even while somebody holds the lock (it is broken).
        :returns: the lock that was broken, if any.
        :raises NotFound: there is no such device.
        :raises DeviceLocked: somebody holds the lock and ``force`` is not given.
        :raises Conflict: objects remained after deleting (a lagging listing).
        :raises BackendUnavailable: the backend failed.
        """
        self.get_device(name)
        holder = blocklock.read_lock(self, name)
        if holder is not None and not force:
            raise DeviceLocked(
                f"device {name} is locked by {holder.describe()}; "
                "unlock it first or delete with --force",
                holder,
            )
        try:
            self._destroy_device(name)
        finally:
            self._geometries.forget(name)
        return holder

    # -- objects -------------------------------------------------------------
    # These do not check that the device exists (that would cost a request
    # per object): its geometry is looked up once and remembered.

    def read_object(self, device: str, index: int) -> bytes | None:
        """Object ``index`` of ``device``.

        :returns: its ``object_size`` bytes, or None when it is not stored (zeros).
        :raises InvalidArgument: a bad name, or an index past the device's end.
        :raises NotFound: there is no such device.
        :raises BackendUnavailable: the backend failed.
        """
        self._check_object(device, index)
        return self._read_object(device, index)

    @abc.abstractmethod
    def _read_object(self, device: str, index: int) -> bytes | None:
        """The stored object, None when not stored (arguments checked)."""

    def read_range(self, device: str, index: int, start: int, length: int) -> bytes | None:
        """``length`` bytes of object ``index`` from byte ``start`` of the object.

        Backends that can fetch part of an object declare ``RANGED_READ``; the
        NBD cache then serves scattered small reads without moving whole objects.

        :returns: exactly ``length`` bytes, or None when the object is not stored.
        :raises InvalidArgument: as read_object, or a range outside the object.
        :raises BackendUnavailable: the backend failed.
        """
        self._check_range(device, index, start, length)
        return self._read_range(device, index, start, length)

    def _read_range(self, device: str, index: int, start: int, length: int) -> bytes | None:
        """The range (arguments checked).  This fallback reads the object and slices it."""
        data = self._read_object(device, index)
        if data is None:
            return None
        part = data[start : start + length]
        return part + bytes(length - len(part)) if len(part) < length else part

    def write_object(self, device: str, index: int, data: bytes) -> None:
        """Store object ``index`` durably, replacing it; returns once it is stored.

        Writers of a locked device call this through their Lease (see
        :mod:`~stowkit.corelib.blocklease`).  Callers delete all-zero objects
        instead of writing them (see is_zeros).

        :param data: exactly ``object_size`` bytes (or what upload_body/lend_body made).
        :raises InvalidArgument: a bad name or index, or data of another size.
        :raises NotFound: the device is gone.
        :raises BackendUnavailable: the backend failed (StorageFull, StorageDenied).
        """
        self._check_object(device, index, data)
        self._write_object(device, index, data)

    @abc.abstractmethod
    def _write_object(self, device: str, index: int, data: bytes) -> None:
        """Store the object durably (arguments checked)."""

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

    def delete_object(self, device: str, index: int) -> None:
        """Forget object ``index`` (it reads as zeros); no error when it is not stored.

        :raises InvalidArgument: a bad name or index.
        :raises BackendUnavailable: the backend failed.
        """
        self._check_object(device, index)
        self._delete_object(device, index)

    @abc.abstractmethod
    def _delete_object(self, device: str, index: int) -> None:
        """Delete the object, no error when absent (arguments checked)."""

    def list_objects(self, device: str) -> Iterator[int]:
        """Indexes of the stored objects of ``device``, ascending.

        :raises InvalidArgument: a bad name.
        :raises NotFound: there is no such device.
        :raises BackendUnavailable: the backend failed.
        """
        names.check_name(device, "device name")
        return self._list_objects(device)

    @abc.abstractmethod
    def _list_objects(self, device: str) -> Iterator[int]:
        """Indexes of the stored objects, ascending (name checked)."""

    def remember_geometry(self, device: BlockDevice) -> None:
        """Note the settings of a device just read, for its object calls to check against."""
        self._geometries.remember(device)

    def _check_object(self, device: str, index: int, data: bytes | None = None) -> None:
        """Validate an object call: name, index in range, data of the object size."""
        names.check_name(device, "device name")
        if not isinstance(index, int) or index < 0:
            raise InvalidArgument(f"invalid object index {index!r}")
        size, object_size = self._geometries.get(device, self.get_device)
        if index * object_size >= size:
            raise InvalidArgument(f"object {index} is past the end of device {device}")
        if data is not None and len(data) != object_size:  # type: ignore[arg-type]
            raise InvalidArgument(
                f"object {index} of device {device}: {len(data)} bytes given, "  # type: ignore[arg-type]
                f"the object size is {object_size}"
            )

    def _check_range(self, device: str, index: int, start: int, length: int) -> None:
        self._check_object(device, index)
        object_size = self._geometries.get(device, self.get_device)[1]
        if start < 0 or length <= 0 or start + length > object_size:
            raise InvalidArgument(
                f"invalid range {start}+{length} of object {index} (object size {object_size})"
            )

    # -- control objects: the primitives the lock is written over ----------------

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

    #: Seconds a conditional create may take to settle.  Swift checks
    #: ``If-None-Match`` when a PUT starts, so two PUTs that start together
    #: can both succeed; the newer one's content is what stays.  Re-reading
    #: only after this delay lets every such rival land first, so exactly one
    #: creator finds its own token.  Zero where create is atomic (O_EXCL).
    settle_seconds: float = 0.0

    def _settle(self) -> None:
        if self.settle_seconds > 0:
            time.sleep(self.settle_seconds)

    def record_name(self, device: str) -> str:
        """What names ``device`` in this host's local state (a container, a directory)."""
        return device


__all__ = [
    "BlockDevice",
    "BlockStore",
    "BlockStoreCapability",
    "DEFAULT_OBJECT_SIZE",
    "FORMAT_VERSION",
    "StorageDenied",
    "StorageFull",
    "check_geometry",
    "is_zeros",
    "object_index",
    "object_name",
    "zeros",
]
