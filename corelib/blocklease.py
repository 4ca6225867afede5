"""The writer's side of a device lock: :class:`Lease`, and the unlocked writer.

A writer changes a device's objects through an :class:`ObjectWriter`: a
:class:`Lease` for a locked device (it takes, confirms, renews and releases
the lock, see :mod:`stowkit.corelib.blocklock`, and fences every write), or
an :class:`UnlockedWriter` for a device nobody locks (tests, embedding).  The
NBD cache and the whole-device copies write through one of them and never
branch on which.

Lease states (see :class:`Lease`)::

    new --acquire--> unconfirmed --confirm--> valid --release--> released
                         |                      |
                         +----> lost <----------+   (final)

This process's leases are registered per store (:func:`held_lease`), so a
copy started under a lease already held (``blockstore upload`` inside
:func:`held`) stores through it instead of locking twice.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

from stowkit.corelib import blocklock
from stowkit.corelib.blocklock import (
    DEFAULT_LEASE,
    RENEW_MARGIN,
    DeviceLocked,
    LeaseLost,
    LockInfo,
    reclaimable,
    release_later,
    renew_every,
)
from stowkit.corelib.blockunstored import (
    UNSTORED_KEY,
    UnstoredRecord,
    forget_local_record,
    write_local_record,
)
from stowkit.corelib.errors import BackendUnavailable, InvalidArgument

if TYPE_CHECKING:
    from stowkit.corelib.blockstore import BlockStore

LOG = logging.getLogger(__name__)


class ObjectWriter(Protocol):
    """Stores and deletes one device's objects: the only way its writers change it."""

    device: str

    def write_object(self, index: int, data: bytes) -> None: ...

    def delete_object(self, index: int) -> None: ...


class UnlockedWriter:
    """An :class:`ObjectWriter` for a device written without its lock (tests, embedding)."""

    def __init__(self, store: BlockStore, device: str) -> None:
        self.store = store
        self.device = device

    def write_object(self, index: int, data: bytes) -> None:
        self.store.write_object(self.device, index, data)

    def delete_object(self, index: int) -> None:
        self.store.delete_object(self.device, index)


class Lease:
    """The one answer to "may I write to this device now?".

    Made for a store, a device and an owner (``Lease(store, device, owner)``),
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
        reclaim: bool = False,
        leftover: LockInfo | None = None,
    ) -> Lease:
        """Take the lock; DeviceLocked when held.  ``confirm=False`` leaves the re-read to
        :meth:`confirm`.  With ``reclaim``, a holder the rule
        :func:`~stowkit.corelib.blocklock.reclaimable` gives back (a dead holder of
        this host with our owner, or ``leftover``, our own lock a failed release left
        behind) has its lock broken, naming it, and the lock is taken again."""
        with self._io:
            if self.state != "new":
                raise RuntimeError(f"lease of {self.device} is already {self.state}")
            self._started = time.monotonic()
            try:
                info = blocklock.take_unconfirmed(
                    self.store, self.device, self.owner, self.lease_seconds
                )
            except DeviceLocked as err:
                holder = err.holder
                if holder is None or not reclaim or not reclaimable(holder, self.owner, leftover):
                    raise
                LOG.warning(
                    "device %s: breaking the lock of a dead holder: %s",
                    self.device,
                    holder.describe(),
                )
                # Names the dead holder: a lock taken meanwhile by anyone else stays.
                blocklock.unlock(self.store, self.device, expected=holder)
                info = blocklock.take_unconfirmed(
                    self.store, self.device, self.owner, self.lease_seconds
                )
            self.info = info
            self.state = "unconfirmed"
            _REGISTRY.add(self)
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
                blocklock.confirm(self.store, self.device, self.info)
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
        """Renew in a background thread every ``every`` seconds (default: the one
        rule, :func:`~stowkit.corelib.blocklock.renew_every`)."""
        if self.lease_seconds is None or self._thread is not None:
            return self
        interval = every if every is not None else renew_every(self.lease_seconds)
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
                self.info = blocklock.renew(self.store, self.device, self.info, self.lease_seconds)
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
            _REGISTRY.remove(self)
            if state == "released" or self.info is None:
                return None
            # Lost too: the lease may have run out here (a stall) while the lock
            # is still ours; unlock() names our token, so a rival's stays.
            try:
                removed = blocklock.unlock(self.store, self.device, self.info)
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

    def retry_release_later(self) -> LockInfo | None:
        """After :meth:`release` failed or hung: keep trying from a thread of its own
        (:func:`~stowkit.corelib.blocklock.release_later`).  Returns our lock left
        behind, which the next :meth:`acquire` may reclaim (``leftover``)."""
        if self.info is None:
            return None
        release_later(self.store, self.device, self.info, self.lease_seconds)
        return self.info

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
        return write_local_record(self.store, record)

    def clear_unstored(self) -> None:
        """Forget earlier records (the device was rewritten whole under this lease)."""
        self.check()
        self._verify(force=True)
        self.store._control_delete(self.device, UNSTORED_KEY)
        forget_local_record(self.store, self.device)

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
            current = blocklock.read_lock(self.store, self.device)
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


class _Registry:
    """The leases this process holds, per store and device (weakly: a dropped store goes)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._leases: weakref.WeakKeyDictionary[BlockStore, dict[str, Lease]] = (
            weakref.WeakKeyDictionary()
        )

    def add(self, lease: Lease) -> None:
        with self._guard:
            self._leases.setdefault(lease.store, {})[lease.device] = lease

    def remove(self, lease: Lease) -> None:
        with self._guard:
            leases = self._leases.get(lease.store, {})
            if leases.get(lease.device) is lease:
                del leases[lease.device]

    def get(self, store: BlockStore, device: str) -> Lease | None:
        with self._guard:
            return self._leases.get(store, {}).get(device)


_REGISTRY = _Registry()


def held_lease(store: BlockStore, device: str) -> Lease | None:
    """The lease this process holds on ``device`` through ``store``, if any."""
    return _REGISTRY.get(store, device)


def lease_for(store: BlockStore | Lease, device: str) -> Lease | None:
    """The lease to store ``device``'s objects through: ``store`` itself when it is one,
    else the one this process holds on the device (None: the caller must take one)."""
    lease = store if isinstance(store, Lease) else held_lease(store, device)
    if lease is not None and lease.device != device:
        raise InvalidArgument(f"the lease given is for device {lease.device}, not {device}")
    return lease


@contextlib.contextmanager
def held(
    store: BlockStore, device: str, owner: str, lease_seconds: float = DEFAULT_LEASE
) -> Iterator[Lease]:
    """Hold a :class:`Lease` on ``device`` for the ``with`` block, renewed in the background.

    Objects stored through the lease stop the moment it is lost; LeaseLost is
    raised when the block ends if it was, whatever the block did, and the
    lock of whoever holds it now is left alone.  (A stale lock taken over is
    logged once, by the protocol.)
    """
    lease = Lease(store, device, owner, lease_seconds).acquire()
    lease.start()
    try:
        yield lease
    finally:
        lease.release()
    if lease.lost:
        raise lease.error()


__all__ = [
    "Lease",
    "ObjectWriter",
    "UnlockedWriter",
    "held",
    "held_lease",
    "lease_for",
]
