"""One served device: its cache, its lock, and the connections using it.

Lock policy (doc/nbd.md): a writable export takes the device lock when its
first client connects (NBD_OPT_GO or NBD_OPT_EXPORT_NAME) and releases it,
after writing back every dirty object, when its last client disconnects.
Connections to the same export on the same server share one cache, so they
see each other's writes and a FLUSH on any of them covers all of them: that
is what makes NBD_FLAG_CAN_MULTI_CONN safe to advertise.  Another server (or
``stowkit blockstore lock``) holding the lock makes the export refuse clients.
Read-only exports take no lock.

The lock is created when the first client connects, but confirmed (after
the backend's ``settle_seconds``, a quarter of a second on Swift) in the background:
the client starts at once, its writes go into the cache, and nothing is
stored, not even a FLUSH answered, until the confirmation says the lock is
ours.  If a rival won, the cache's uploads fail, FLUSH gets EIO and writes
are refused: the device is never touched.

Everything about the lock is the :class:`~stowkit.corelib.blockstore.Lease`'s:
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
import os
import socket

from oslo_config import cfg

from stowkit.corelib.blockstore import (
    DEFAULT_LEASE,
    BlockDevice,
    BlockStore,
    Lease,
    LockInfo,
)
from stowkit.corelib.nbd import protocol as p
from stowkit.corelib.nbd.cache import ObjectCache

LOG = logging.getLogger(__name__)

LOCK_OWNER = "stowkit nbd server"

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
        help="Payload bytes of one connection's requests in flight (WRITE data read, "
        "READ data to send), at least 32 MiB, the largest request; beyond it the "
        "server stops reading that connection (TCP backpressure).",
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    ) -> None:
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

    def apply_conf(self, conf: cfg.ConfigOpts) -> ExportSettings:
        """Take the ``[blockstore]`` options of ``conf`` (registering them if needed)."""
        register_opts(conf)
        group = conf[GROUP]
        self.retry_time = group.writeback_retry_time
        self.retry_attempts = group.writeback_retry_attempts
        self.shutdown_timeout = group.shutdown_timeout
        self.max_inflight_bytes = group.max_inflight_bytes
        self.handshake_timeout = group.handshake_timeout
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

    # -- clients --------------------------------------------------------------------
    async def attach(self) -> ObjectCache:
        """A client starts using the export: lock on first use; DeviceLocked if held."""
        async with self._guard:
            if self._clients == 0:
                lease = None
                if not self.read_only:
                    lease = self.store.lease(self.name, LOCK_OWNER, self.settings.lease)
                    await self._call(lease.acquire, False, self._dead_local_server)
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
                    lease=lease,
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
            self._clients += 1
            assert self.cache is not None
            return self.cache

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
        lease.start(max(self.settings.lease / 3, 0.5))

    @staticmethod
    def _dead_local_server(holder: LockInfo) -> bool:
        """A server on this very host that died (SIGKILL) leaves its lock behind;
        nobody else can be using it."""
        return (
            holder.owner == LOCK_OWNER
            and holder.host == socket.gethostname()
            and holder.pid != os.getpid()
            and not _pid_alive(holder.pid)
        )

    async def detach(self) -> None:
        """A client is gone: on the last one, write everything back and unlock."""
        async with self._guard:
            self._clients -= 1
            if self._clients > 0:
                return
            cache, self.cache = self.cache, None
            try:
                if cache is not None:
                    await cache.close(self.settings.shutdown_timeout)
            finally:
                await self._release_lock()

    async def _release_lock(self) -> None:
        confirmed, self._confirmed = self._confirmed, None
        if confirmed is not None:
            # Unlocking a lock a rival won would fail (or worse): know first.
            await asyncio.gather(confirmed, return_exceptions=True)
        lease, self.lease = self.lease, None
        if lease is not None:
            try:
                # Waits for a renewal in flight: the lock cannot come back after this.
                await self._call(lease.release)
            except Exception as err:
                LOG.error("device %s: could not release the lock: %s", self.name, err)
