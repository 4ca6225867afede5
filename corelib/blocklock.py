"""The device lock: its record, its protocol, and the rules about who may break it.

One writer per device.  The lock is a control object (``stowkit.lock``, JSON)
created only if it does not exist (Swift ``If-None-Match: *``, ``link()``
locally), then re-read: the taker keeps it only if its own token is there.
Swift checks the condition when a PUT starts, so two PUTs that start together
can both succeed (the newer content stays); the re-read waits the backend's
``settle_seconds`` for such a rival to land, so exactly one taker wins.  The
lock names its owner (label, host, pid, a random token) and a lease expiry;
the holder renews it well within the lease (:func:`renew_every`).  An expired
lock may be taken over: exactly one taker wins a per-token "takeover" marker
created the same atomic way, re-checks that the stale lock is still the one it
saw, replaces it, and re-reads it to confirm.  A lock with no lease
(``lease_seconds=None``, what ``stowkit blockstore lock`` takes by hand) never
goes stale.  Leases are compared with the wall clock of whoever reads them, so
hosts sharing a device need roughly synchronised clocks (NTP).

The protocol runs over four primitives every BlockStore provides on control
objects (``_control_get``, ``_control_create``, ``_control_replace``,
``_control_delete``) and its ``settle_seconds``; nothing here knows a backend.
The writer's side of the lock (take, confirm, renew, fence writes, release)
is :class:`stowkit.corelib.blocklease.Lease`.

The named rules, each written once here:

* :func:`renew_every`: how often a holder renews its lease;
* :func:`settled_create`: create a control object and trust it only after the
  settle time (the lock, and the Swift backend's device setup);
* :func:`reclaimable`: a lock left by a dead holder of this host, or our own
  left behind by a release that failed, may be broken and taken again;
* :func:`release_later`: a release that failed is retried in the background
  until the lease would have run out anyway;
* :func:`break_lock_read`: break exactly the lock just read, never one taken
  meanwhile;
* :func:`lock_refusing_copy`: a device held by a live writer is not copied
  (a copy taken while it is written may be inconsistent).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from stowkit.corelib import names
from stowkit.corelib.errors import Locked
from stowkit.corelib.process import pid_alive

if TYPE_CHECKING:
    from stowkit.corelib.blockstore import BlockDevice, BlockStore

LOG = logging.getLogger(__name__)

#: Lease of a server's lock when none is given; see renew_every.
DEFAULT_LEASE = 60.0
#: renew() refuses a lease this close to its end (a taker may be at work).
RENEW_MARGIN = 1.0
#: The shortest pause between two renewals, whatever the lease.
MIN_RENEW_INTERVAL = 0.05

LOCK_KEY = "stowkit.lock"
TAKEOVER_PREFIX = "stowkit.lock.takeover."


def renew_every(lease_seconds: float) -> float:
    """Seconds between two renewals of a lease of ``lease_seconds``: a third of it.

    Two renewals may fail in a row (the backend briefly down) and the third
    still lands before the lease runs out.
    """
    return max(lease_seconds / 3, MIN_RENEW_INTERVAL)


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


class DeviceLocked(Locked):
    """The device is locked by someone else; ``holder`` says who."""

    def __init__(self, message: str, holder: LockInfo | None = None) -> None:
        super().__init__(message)
        self.holder = holder


class LeaseLost(DeviceLocked):
    """The lease is gone (broken, taken over, expired unrenewed): stop writing."""


# -- creating a control object atomically --------------------------------------------


def timed_create(store: BlockStore, device: str, key: str, data: bytes) -> tuple[bool, float]:
    """Create control object ``key`` unless it exists: (created, seconds the create took)."""
    started = time.monotonic()
    created = store._control_create(device, key, data)
    return created, time.monotonic() - started


def create_untrusted(store: BlockStore, seconds: float | None) -> bool:
    """True when a create that took ``seconds`` cannot be trusted, even if its content is read back.

    While a create slower than the settle time was in flight, a rival's create
    may have started after it, landed, passed its own re-read and gone on;
    ours, landing later (and newer), would then make two winners.
    """
    return store.settle_seconds > 0 and seconds is not None and seconds >= store.settle_seconds


def settle_then_read(store: BlockStore, device: str, key: str) -> bytes | None:
    """Wait the backend's settle time (every rival create landed by then), then read ``key``."""
    store._settle()
    return store._control_get(device, key)


@dataclasses.dataclass(frozen=True)
class SettledCreate:
    """What :func:`settled_create` found."""

    created: bool  # our create went through, read back after the settle time
    seconds: float  # how long the create took
    untrusted: bool  # it took the settle time or longer: nobody can say who won


def settled_create(
    store: BlockStore, device: str, key: str, data: bytes, mine: Callable[[bytes | None], bool]
) -> SettledCreate:
    """Create ``key`` with ``data`` and keep it only if, after the settle time, it is still ours.

    ``mine(content)`` tells our content from a rival's.  A create slower than
    the settle time is reported ``untrusted`` without the re-read: the caller
    says why it refuses (see :func:`create_untrusted`).
    """
    created, seconds = timed_create(store, device, key, data)
    if not created:
        return SettledCreate(False, seconds, False)
    if create_untrusted(store, seconds):
        return SettledCreate(True, seconds, True)
    return SettledCreate(mine(settle_then_read(store, device, key)), seconds, False)


# -- the protocol ----------------------------------------------------------------------


def read_lock(store: BlockStore, device: str) -> LockInfo | None:
    """Who holds the device's lock now (possibly stale), or None."""
    names.check_name(device, "device name")
    data = store._control_get(device, LOCK_KEY)
    return None if data is None else LockInfo.from_json(data)


def take(
    store: BlockStore, device: str, owner: str = "", lease_seconds: float | None = DEFAULT_LEASE
) -> LockInfo:
    """Take the device's exclusive lock; DeviceLocked (with ``holder``) when held.

    A lock whose lease expired is taken over: a warning is logged and the
    returned LockInfo's ``taken_over`` is the stale lock.
    """
    return confirm(store, device, take_unconfirmed(store, device, owner, lease_seconds))


def take_unconfirmed(
    store: BlockStore, device: str, owner: str = "", lease_seconds: float | None = DEFAULT_LEASE
) -> LockInfo:
    """Create the lock as :func:`take` does, without its final check (:func:`confirm`)."""
    store.get_device(device)
    mine = LockInfo.new(owner, lease_seconds)
    began = time.monotonic()
    for _attempt in range(5):
        created, seconds = timed_create(store, device, LOCK_KEY, mine.to_json())
        if created:
            # confirm refuses it if the create was slow
            return dataclasses.replace(mine, create_seconds=seconds)
        holder = read_lock(store, device)
        if holder is None:
            continue  # released in between: try again
        if holder.token == mine.token:
            # Our create went through but its answer was lost and the
            # client retried: the lock is ours (if it was quick enough).
            return dataclasses.replace(mine, create_seconds=time.monotonic() - began)
        if not holder.expired():
            raise DeviceLocked(f"device {device} is locked by {holder.describe()}", holder)
        taken = _take_over(store, device, holder, mine)
        if taken is not None:
            return taken
    raise DeviceLocked(f"device {device}: the lock keeps changing hands; try again")


def _take_over(store: BlockStore, device: str, stale: LockInfo, mine: LockInfo) -> LockInfo | None:
    # Only the one taker that creates the marker for this stale token may
    # remove the stale lock, so two takers cannot each delete the other's
    # fresh lock.  The marker is left behind (it names a token that will
    # never be used again) and removed with the device.
    marker = TAKEOVER_PREFIX + stale.token
    if not store._control_create(device, marker, mine.to_json()):
        raise DeviceLocked(
            f"device {device}: someone else is taking over the stale lock of {stale.describe()}",
            stale,
        )
    current = read_lock(store, device)
    if current is not None and (current.token, current.expires) != (stale.token, stale.expires):
        return None  # renewed, or released and re-taken meanwhile: start again
    store._control_delete(device, LOCK_KEY)
    created, seconds = timed_create(store, device, LOCK_KEY, mine.to_json())
    if not created:
        return None
    store._control_delete(device, marker)
    LOG.warning("device %s: took over the stale lock of %s", device, stale.describe())
    return dataclasses.replace(mine, taken_over=stale, create_seconds=seconds)


def confirm(store: BlockStore, device: str, mine: LockInfo) -> LockInfo:
    """``mine`` once it is sure the lock is ours; DeviceLocked if a rival won.

    A create that took ``settle_seconds`` or longer is not trusted, even when
    the re-read finds our token (see :func:`create_untrusted`; for two winners
    the later-landing create must take longer than the settle time: a rival
    that landed first re-reads ``settle_seconds`` after its answer, when every
    create that started before it landed has landed too, unless that create
    is this slow).  Our lock object is then removed: the device is left
    unlocked, and a rival whose lock ours replaced stops before its next
    write (a Lease re-reads the lock before storing).  Nobody keeps a lock
    won that way, so of two racing takers at most one ever stores anything; a
    caller may simply try again.
    """
    if create_untrusted(store, mine.create_seconds):
        _drop_own(store, device, mine)
        raise DeviceLocked(
            f"device {device}: creating the lock took {mine.create_seconds:.2f} s, "
            f"longer than the settle time ({store.settle_seconds:g} s): a rival may have "
            "taken the device meanwhile, so it is not ours; try again",
            None,
        )
    data = settle_then_read(store, device, LOCK_KEY)
    current = None if data is None else LockInfo.from_json(data)
    if current is None or current.token != mine.token:
        who = current.describe() if current else "nobody"
        raise DeviceLocked(f"device {device}: lost the lock race to {who}", current)
    return mine


def _drop_own(store: BlockStore, device: str, mine: LockInfo) -> None:
    """Remove our own lock object, if it is still there (never anyone else's)."""
    try:
        unlock(store, device, mine)
    except DeviceLocked:
        pass
    except Exception as err:
        LOG.warning("device %s: could not remove our untrusted lock: %s", device, err)


def renew(
    store: BlockStore, device: str, lock: LockInfo, lease_seconds: float | None = DEFAULT_LEASE
) -> LockInfo:
    """Extend ``lock``'s lease; DeviceLocked when it is no longer ours.

    A holder that gets DeviceLocked here has lost its lock (broken by hand or
    taken over after its lease ran out) and must stop writing.
    """
    current = read_lock(store, device)
    if current is None or current.token != lock.token:
        who = current.describe() if current else "nobody (it was unlocked)"
        raise DeviceLocked(f"device {device}: our lock is gone; it is now held by {who}", current)
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
    store._control_replace(device, LOCK_KEY, renewed.to_json())
    return renewed


def unlock(
    store: BlockStore,
    device: str,
    lock: LockInfo | None = None,
    force: bool = False,
    expected: LockInfo | None = None,
) -> LockInfo | None:
    """Release ``lock`` (ours), or break the lock of ``expected`` (someone else's).

    Returns the lock that was removed (None when there was none).  A lock held
    by anyone but ``lock``/``expected`` is left alone and raises DeviceLocked
    (with its ``holder``): whoever breaks a lock must say whose lock it means
    to break, so that a lock taken meanwhile by a third party survives.
    ``force`` without ``expected`` breaks whatever lock there is at this
    moment (tests, emergencies).
    """
    current = read_lock(store, device)
    if current is None:
        store.get_device(device)  # NotFound beats "not locked"
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
    store._control_delete(device, LOCK_KEY)
    if lock is None:
        LOG.info("device %s: broke the lock of %s", device, current.describe())
    return current


# -- the named rules -------------------------------------------------------------------


def reclaimable(holder: LockInfo, owner: str, leftover: LockInfo | None = None) -> bool:
    """May ``holder``'s lock be broken by a new holder named ``owner`` on this host?

    Yes for ``leftover``, our own lock that a failed release left behind, and
    for a lock of the same owner on this very host whose process is dead (a
    server killed by SIGKILL): nobody else can be using it.
    """
    if leftover is not None and holder.token == leftover.token:
        return True
    return (
        holder.owner == owner
        and holder.host == socket.gethostname()
        and holder.pid != os.getpid()
        and not pid_alive(holder.pid)
    )


#: Seconds between two attempts of a release retried in the background.
RELEASE_RETRY_INTERVAL = 2.0


def release_later(
    store: BlockStore, device: str, lock: LockInfo, lease_seconds: float | None
) -> threading.Thread:
    """Keep trying to remove our ``lock`` from a daemon thread (it never holds up an exit).

    For a release that failed (the backend down or hung): the lock goes once
    the backend is back, or the attempts stop when the lease ran out (the
    lock is stale then anyway; a lock without a lease is retried for
    DEFAULT_LEASE).  It names our token, so a lock taken meanwhile by anyone
    else stays.
    """
    thread = threading.Thread(
        target=_release_until,
        args=(store, device, lock, lease_seconds if lease_seconds is not None else DEFAULT_LEASE),
        name=f"unlock-{device}",
        daemon=True,
    )
    thread.start()
    return thread


def _release_until(store: BlockStore, device: str, lock: LockInfo, lease: float) -> None:
    deadline = time.monotonic() + lease  # then the lock is stale anyway
    while time.monotonic() < deadline:
        try:
            unlock(store, device, lock)
        except DeviceLocked:
            return  # someone else's now
        except Exception as err:
            LOG.debug("device %s: unlock still failing: %s", device, err)
            time.sleep(RELEASE_RETRY_INTERVAL)
            continue
        LOG.warning("device %s: the lock left behind is released now", device)
        return


def break_lock_read(
    store: BlockStore, device: str, seen: Callable[[LockInfo], None] | None = None
) -> LockInfo | None:
    """Break the lock held on ``device`` now, and only that one; the lock broken, or None.

    The holder is read first (``seen(holder)`` is told who it is) and the
    break names it: a lock taken meanwhile by someone else is left alone
    (DeviceLocked says whose it is now).  NotFound when there is no device.
    """
    holder = read_lock(store, device)
    if holder is None:
        store.get_device(device)  # NotFound beats "not locked"
        return None
    if seen is not None:
        seen(holder)
    return unlock(store, device, expected=holder)


def lock_refusing_copy(device: BlockDevice) -> LockInfo | None:
    """The live lock that makes copying ``device`` unsafe, or None when it may be copied.

    A device held by a writer whose lease has not run out may change while it
    is read, so the copy may be inconsistent; a stale lock does not refuse.
    """
    lock = device.lock
    return lock if lock is not None and not lock.expired() else None


__all__ = [
    "DEFAULT_LEASE",
    "DeviceLocked",
    "LeaseLost",
    "LockInfo",
    "RENEW_MARGIN",
    "SettledCreate",
    "break_lock_read",
    "confirm",
    "lock_refusing_copy",
    "read_lock",
    "reclaimable",
    "release_later",
    "renew",
    "renew_every",
    "settled_create",
    "take",
    "take_unconfirmed",
    "unlock",
]
