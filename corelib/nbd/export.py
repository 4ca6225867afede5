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
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import socket

from stowkit.corelib.blockstore import (
    DEFAULT_LEASE,
    BlockDevice,
    BlockStore,
    DeviceLocked,
    LockInfo,
)
from stowkit.corelib.nbd import protocol as p
from stowkit.corelib.nbd.cache import ObjectCache

LOG = logging.getLogger(__name__)

LOCK_OWNER = "stowkit nbd server"


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
    ) -> None:
        self.cache_size = cache_size
        self.workers = workers
        self.readahead = readahead
        self.lease = lease
        self.max_block = max_block


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
        self.lock: LockInfo | None = None
        self.lost_lock: str | None = None
        self._clients = 0
        self._guard = asyncio.Lock()
        self._renewer: asyncio.Task | None = None
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
                if not self.read_only:
                    self.lock = await self._call(self._take_lock)
                    self.lost_lock = None
                    self._confirmed = asyncio.ensure_future(self._confirm_lock(self.lock))
                    self._renewer = asyncio.ensure_future(self._renew_loop())
                cache = ObjectCache(
                    self.store,
                    self.device,
                    capacity=self.settings.cache_size,
                    workers=self.settings.workers,
                    readahead=self.settings.readahead,
                    trust_listing=not self.read_only,
                    executor=self._executor,
                    gate=self._confirmed,
                )
                try:
                    await cache.start()
                except BaseException:
                    await self._release_lock()
                    raise
                self.cache = cache
            self._clients += 1
            assert self.cache is not None
            return self.cache

    async def _confirm_lock(self, lock: LockInfo) -> None:
        try:
            await self._call(self.store.confirm_lock, self.name, lock)
        except Exception as err:
            # A backend error is treated as a lost race: unsure is not ours.
            self.lost_lock = str(err)
            LOG.error("device %s: the lock is not ours, refusing writes: %s", self.name, err)
            raise

    def _take_lock(self) -> LockInfo:
        """The device lock, not yet confirmed (see the module's docstring)."""
        try:
            return self.store.lock_unconfirmed(self.name, LOCK_OWNER, self.settings.lease)
        except DeviceLocked as err:
            holder = err.holder
            # A server on this very host that died (SIGKILL, power cut of the
            # process) leaves its lock behind; nobody else can be using it.
            if (
                holder is not None
                and holder.owner == LOCK_OWNER
                and holder.host == socket.gethostname()
                and holder.pid != os.getpid()
                and not _pid_alive(holder.pid)
            ):
                LOG.warning(
                    "device %s: breaking the lock of a dead server: %s",
                    self.name,
                    holder.describe(),
                )
                self.store.unlock(self.name, force=True)
                return self.store.lock_unconfirmed(self.name, LOCK_OWNER, self.settings.lease)
            raise

    async def detach(self) -> None:
        """A client is gone: on the last one, write everything back and unlock."""
        async with self._guard:
            self._clients -= 1
            if self._clients > 0:
                return
            cache, self.cache = self.cache, None
            try:
                if cache is not None:
                    await cache.close()
            finally:
                await self._release_lock()

    async def _release_lock(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            self._renewer = None
        confirmed, self._confirmed = self._confirmed, None
        if confirmed is not None:
            # Unlocking a lock a rival won would fail (or worse): know first.
            await asyncio.gather(confirmed, return_exceptions=True)
        lock, self.lock = self.lock, None
        if lock is not None and self.lost_lock is None:
            try:
                await self._call(self.store.unlock, self.name, lock)
            except Exception as err:
                LOG.error("device %s: could not release the lock: %s", self.name, err)

    async def _renew_loop(self) -> None:
        lease = self.settings.lease
        if self._confirmed is not None:
            try:
                await asyncio.shield(self._confirmed)
            except Exception:
                return  # not ours: nothing to renew
        while True:
            await asyncio.sleep(max(lease / 3, 0.5))
            lock = self.lock
            if lock is None:
                return
            try:
                self.lock = await self._call(self.store.renew, self.name, lock, lease)
            except DeviceLocked as err:
                self.lost_lock = str(err)
                LOG.error("device %s: lost the lock, refusing writes: %s", self.name, err)
                return
            except Exception as err:
                LOG.warning("device %s: could not renew the lock: %s", self.name, err)
