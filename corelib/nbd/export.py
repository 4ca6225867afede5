"""One served device: its cache, its lock, and the connections using it.

Lock policy (doc/nbd.md), ``[blockstore] lock_scope``:

* ``server`` (the default; qemu-nbd holds its image's lock the same way):
  a writable export takes the device lock when the server starts, confirmed
  before the server listens, and keeps it, with its cache, until the server
  stops.  A device locked by someone else stops the server from starting.
  The last client's disconnect writes everything back but keeps the lock,
  so a reconnecting client finds its device still reserved and its cache warm.
* ``connection`` (swiftnbd-server's way, and stowkit-swiftnbd-server's
  unless configured): the lock is taken when the first client connects
  (NBD_OPT_GO or NBD_OPT_EXPORT_NAME) and released, after writing back
  every dirty object, when the last one disconnects; another holder makes
  the export refuse clients.

Connections to the same export on the same server share one cache, so they
see each other's writes and a FLUSH on any of them covers all of them: that
is what makes NBD_FLAG_CAN_MULTI_CONN safe to advertise.  Read-only exports
take no lock.

Taken at a client's connection, the lock is confirmed (after the backend's
``settle_seconds``, a quarter of a second on Swift) in the background: the
client starts at once, its writes go into the cache, and nothing is stored,
not even a FLUSH answered, until the confirmation says the lock is ours.  If
a rival won, the cache's uploads fail, FLUSH gets EIO and writes are
refused: the device is never touched.  A lock lost while the server holds
it is taken again (or refused) when the next client connects.

Everything about the lock is the :class:`~stowkit.corelib.blocklease.Lease`'s:
it renews itself, and it is the cache's only way to store or delete
objects.  When it is lost (a rival won the confirmation, a renewal found
someone else's lock, or renewals failed for a whole lease) the cache is
aborted: every pending and later WRITE, FLUSH and FUA answers EIO at once,
and nothing more is stored.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging

from oslo_config import cfg

from stowkit.corelib.blocklease import Lease
from stowkit.corelib.blocklock import DEFAULT_LEASE, LeaseLost, LockInfo
from stowkit.corelib.blockstore import BlockDevice, BlockStore
from stowkit.corelib.nbd import protocol as p
from stowkit.corelib.nbd.cache import BackendFailing, ObjectCache

LOG = logging.getLogger(__name__)

LOCK_OWNER = "stowkit nbd server"

#: Seconds a client's connection may wait for one write-back attempt when the
#: backend was failing (the rest of the time the handshake goes on at once).
RETRY_ON_CONNECT = 5.0

#: The NBD server's options live in the existing ``[blockstore]`` group.
GROUP = "blockstore"
opts = [
    cfg.FloatOpt(
        "writeback_retry_time",
        default=60.0,
        min=0.0,
        help="Seconds write-back may keep failing (backend down) before FLUSH and FUA "
        "writes answer EIO at once; write-back resumes when the backend is back.",
    ),
    cfg.IntOpt(
        "writeback_retry_attempts",
        default=5,
        min=1,
        help="Failed uploads in a row after which FLUSH and FUA writes answer EIO at once "
        "(whichever of this and writeback_retry_time comes first).",
    ),
    cfg.FloatOpt(
        "shutdown_timeout",
        default=120.0,
        min=0.0,
        help="Seconds the last disconnect or SIGTERM waits for requests and write-back "
        "before giving up, logging the objects that were not stored.",
    ),
    cfg.IntOpt(
        "max_inflight_bytes",
        default=64 << 20,
        min=p.MAX_PAYLOAD,
        help="Payload bytes of the requests in flight on all the connections to one "
        "export (WRITE data read, READ data to send), at least 32 MiB, the largest "
        "request; beyond it the server stops reading those connections (TCP "
        "backpressure).",
    ),
    cfg.StrOpt(
        "lock_scope",
        default="server",
        choices=[
            ("server", "a writable export is locked from the server's start to its stop"),
            ("connection", "locked while at least one client is connected"),
        ],
        help="How long `blockstore serve` holds the lock of a writable device.  'server' "
        "refuses to start on a device locked elsewhere and spares each client the lock's "
        "confirmation; 'connection' leaves idle devices free for other writers.",
    ),
    cfg.FloatOpt(
        "handshake_timeout",
        default=30.0,
        min=0.1,
        help="Seconds a client may take from connecting to choosing an export; a "
        "connection stuck in the handshake is closed after it.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(opts, group=GROUP)


class ExportSettings:
    """Tunables shared by every export of a server."""

    def __init__(
        self,
        cache_size: int = 64 << 20,
        workers: int = 16,
        readahead: int = 4 << 20,
        lease: float = DEFAULT_LEASE,
        max_block: int = p.MAX_PAYLOAD,
        retry_time: float = 60.0,
        retry_attempts: int = 5,
        shutdown_timeout: float = 120.0,
        max_inflight_bytes: int = 64 << 20,
        handshake_timeout: float = 30.0,
        lock_scope: str = "server",
    ) -> None:
        if lock_scope not in ("server", "connection"):
            raise ValueError(f"lock_scope must be 'server' or 'connection', not {lock_scope!r}")
        self.cache_size = cache_size
        self.workers = workers
        self.readahead = readahead
        self.lease = lease
        self.max_block = max_block
        self.retry_time = retry_time
        self.retry_attempts = retry_attempts
        self.shutdown_timeout = shutdown_timeout
        self.max_inflight_bytes = max_inflight_bytes
        self.handshake_timeout = handshake_timeout
        self.lock_scope = lock_scope

    def apply_conf(self, conf: cfg.ConfigOpts) -> ExportSettings:
        """Take the ``[blockstore]`` options of ``conf`` (registering them if needed)."""
        register_opts(conf)
        group = conf[GROUP]
        self.retry_time = group.writeback_retry_time
        self.retry_attempts = group.writeback_retry_attempts
        self.shutdown_timeout = group.shutdown_timeout
        self.max_inflight_bytes = group.max_inflight_bytes
        self.handshake_timeout = group.handshake_timeout
        self.lock_scope = group.lock_scope
        return self


class Export:
    def __init__(
        self,
        store: BlockStore,
        device: BlockDevice,
        read_only: bool = False,
        settings: ExportSettings | None = None,
        executor: concurrent.futures.Executor | None = None,
    ) -> None:
        self.store = store
        self.device = device
        self.read_only = read_only
        self.settings = settings or ExportSettings()
        self._executor = executor
        self.cache: ObjectCache | None = None
        #: The device's lease while a client uses a writable export: the only
        #: path by which the cache stores or deletes objects.
        self.lease: Lease | None = None
        self.lost_lock: str | None = None
        self._clients = 0
        self._guard = asyncio.Lock()
        self._confirmed: asyncio.Task | None = None  # the lock's confirmation
        #: loop.time() by which a stopping server must be done (set by NbdServer.shutdown)
        self.stop_deadline: float | None = None
        #: Our own lock object that could not be removed (the backend was down at
        #: release): the next attach breaks it, naming it, instead of refusing.
        self._leftover: LockInfo | None = None

    @property
    def name(self) -> str:
        return self.device.name

    @property
    def size(self) -> int:
        return self.device.size

    @property
    def description(self) -> str:
        mode = "read-only" if self.read_only else "read-write"
        return f"stowkit device {self.name} ({mode}, {self.device.object_size} byte objects)"

    @property
    def transmission_flags(self) -> int:
        flags = p.TFLAG_HAS_FLAGS | p.TFLAG_SEND_FLUSH | p.TFLAG_SEND_FUA | p.TFLAG_CAN_MULTI_CONN
        if self.read_only:
            flags |= p.TFLAG_READ_ONLY
        else:
            flags |= p.TFLAG_SEND_TRIM | p.TFLAG_SEND_WRITE_ZEROES
        return flags

    @property
    def block_sizes(self) -> tuple[int, int, int]:
        preferred = min(self.device.object_size, self.settings.max_block) or 4096
        return 1, preferred, self.settings.max_block

    async def _call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @property
    def holds_lock_while_serving(self) -> bool:
        return not self.read_only and self.settings.lock_scope == "server"

    # -- the server ---------------------------------------------------------------------
    async def open(self) -> None:
        """At server start (lock_scope ``server``): take the lock and wait until it is
        confirmed ours; DeviceLocked, or LeaseLost when a rival won the race."""
        if not self.holds_lock_while_serving:
            return
        async with self._guard:
            if self.cache is None:
                await self._open()
            confirmed = self._confirmed
        if confirmed is not None:
            try:
                await asyncio.shield(confirmed)
            except BaseException:
                await self.close()
                raise
        if self.lease is not None and self.lease.lost:
            error = self.lease.error()
            await self.close()
            raise error

    async def close(self) -> None:
        """At server stop: write everything back and unlock (no client is left)."""
        async with self._guard:
            if self._clients == 0 and (self.cache is not None or self.lease is not None):
                await self._close()

    # -- clients --------------------------------------------------------------------
    async def attach(self) -> ObjectCache:
        """A client starts using the export: lock on first use; DeviceLocked if held."""
        async with self._guard:
            if self._clients == 0 and self.cache is not None:
                await self._check_held_lock(self.cache)
            if self.cache is None:
                await self._open()
            self._clients += 1
            assert self.cache is not None
            return self.cache

    async def _check_held_lock(self, cache: ObjectCache) -> None:
        """Before a held lock serves a new client: re-read it (it may have been broken
        while nobody used it); if it is lost, report and let go, so that the
        client's attach takes the lock again (or is refused) instead of the
        client's first FLUSH failing.  Under ``_guard``."""
        lease = self.lease
        if lease is not None and cache.aborted is None:
            try:
                await self._call(lease.verify)
            except LeaseLost as err:
                cache.abort(err)
            except Exception as err:  # the backend is failing: writes will tell
                LOG.warning("device %s: could not re-read the lock: %s", self.name, err)
        if cache.aborted is not None:
            try:
                await self._close()
            except Exception as err:
                LOG.error("device %s: %s", self.name, err)
        elif cache.backend_failing:
            # Writes kept from earlier clients wait for the backend: if it is
            # back, the new client's writes need not be refused until the probe.
            try:
                await asyncio.wait_for(cache.retry_now(), RETRY_ON_CONNECT)
            except TimeoutError:
                pass

    async def _open(self) -> None:
        """Take the lock (writable) and make the cache; under ``_guard``."""
        lease = None
        if not self.read_only:
            lease = Lease(self.store, self.name, LOCK_OWNER, self.settings.lease)
            # A dead server of this host, or our own lock a failed release left
            # behind, is reclaimed (blocklock.reclaimable).
            await self._call(lease.acquire, False, True, self._leftover)
            self._leftover = None
            self.lease = lease
            self.lost_lock = None
            loop = asyncio.get_running_loop()
            lease.on_lost(lambda err: loop.call_soon_threadsafe(self._lease_lost, err))
            self._confirmed = asyncio.ensure_future(self._confirm_lock(lease))
        cache = ObjectCache(
            self.store,
            self.device,
            capacity=self.settings.cache_size,
            workers=self.settings.workers,
            readahead=self.settings.readahead,
            trust_listing=not self.read_only,
            executor=self._executor,
            gate=self._confirmed,
            writer=lease,
            retry_time=self.settings.retry_time,
            retry_attempts=self.settings.retry_attempts,
        )
        try:
            await cache.start()
        except BaseException:
            await self._release_lock()
            raise
        self.cache = cache
        if lease is not None and lease.lost:
            cache.abort(lease.error())  # lost while the cache was starting

    @property
    def lock(self) -> LockInfo | None:
        """The lock this export holds now (None when read-only or unused)."""
        return self.lease.info if self.lease is not None else None

    def _lease_lost(self, err: Exception) -> None:
        """On the loop: every pending and later change answers EIO; nothing more is stored."""
        self.lost_lock = str(err)
        if self.cache is not None:
            self.cache.abort(err)

    async def _confirm_lock(self, lease: Lease) -> None:
        await self._call(lease.confirm)  # a failure loses the lease (and aborts the cache)
        lease.start()

    async def detach(self) -> None:
        """A client is gone: on the last one, write everything back (and unlock,
        unless the lock is held for the server and still ours)."""
        async with self._guard:
            self._clients -= 1
            if self._clients > 0:
                return
            cache = self.cache
            keep = (
                self.holds_lock_while_serving
                and self.stop_deadline is None
                and cache is not None
                and cache.aborted is None
            )
            if not keep:
                await self._close()
                return
            assert cache is not None
            # What stays dirty (the backend failing) is kept, retried in the
            # background, and reported at the stop if it never gets stored.
            try:
                await asyncio.wait_for(cache.flush(), self._time_left())
            except TimeoutError:
                raise BackendFailing(
                    f"device {self.name}: write-back did not finish in "
                    f"{self._time_left():g} s; the data stays in the cache"
                ) from None

    async def _close(self) -> None:
        """Write everything back, say what was not stored, unlock; under ``_guard``."""
        cache, self.cache = self.cache, None
        try:
            if cache is not None:
                try:
                    await cache.close(self._time_left())
                except BaseException as err:
                    await self._record_unstored(cache, err)
                    raise
        finally:
            await self._release_lock()

    def _time_left(self) -> float:
        """Seconds the write-back may still take: ``shutdown_timeout``, or less when stopping."""
        left = self.settings.shutdown_timeout
        if self.stop_deadline is not None:
            left = min(left, self.stop_deadline - asyncio.get_running_loop().time())
        return max(0.0, left)

    async def _record_unstored(self, cache: ObjectCache, err: BaseException) -> None:
        """Say in the device (lease still ours) or in local state what was not stored."""
        unstored = cache.unstored()
        if not unstored or self.lease is None:
            return
        lease, nbytes = self.lease, sum(cache.object_length(i) for i in unstored)
        reason = str(err) or type(err).__name__
        # A backend known to be down would only use up the time left.
        local_only = cache.backend_failing or lease.lost or cache.aborted is not None
        try:
            where = await asyncio.wait_for(
                self._call(lease.record_unstored, unstored, nbytes, reason, local_only),
                max(self._time_left(), 1.0),
            )
        except Exception as exc:  # the device write hung or failed: this host's file
            try:
                # On the loop thread: every worker may be stuck in a hung call.
                where = lease.record_unstored(unstored, nbytes, reason, local_only=True)
            except Exception as local_err:
                LOG.error("device %s: could not record what was not stored: %s / %s",
                          self.name, exc, local_err)  # fmt: skip
                return
        LOG.error(
            "device %s: recorded %d objects (%d bytes) not stored in %s",
            self.name,
            len(unstored),
            nbytes,
            "the device" if where == "device" else where,
        )

    async def _release_lock(self) -> None:
        """Unlock, bounded by the time left (at least a second); our lock left behind
        (the backend down or hung) is remembered, and broken by the next attach."""
        confirmed, self._confirmed = self._confirmed, None
        lease, self.lease = self.lease, None
        try:
            async with asyncio.timeout(max(self._time_left(), 1.0)):
                if confirmed is not None:
                    # Unlocking a lock a rival won would fail (or worse): know first.
                    await asyncio.gather(confirmed, return_exceptions=True)
                if lease is not None:
                    # Waits for a renewal in flight: the lock cannot come back after this.
                    await self._call(lease.release)
            return
        except TimeoutError:
            LOG.error("device %s: the lock could not be released in time; it is left behind",
                      self.name)  # fmt: skip
        except Exception as err:
            LOG.error("device %s: could not release the lock: %s", self.name, err)
        if lease is not None:
            # Retried in the background until the backend is back (or the lease
            # ran out); the next attach reclaims it meanwhile.
            self._leftover = lease.retry_release_later()
