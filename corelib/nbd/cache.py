"""A bounded write-back cache of one device's objects, over any BlockStore.

The cache lives on the asyncio loop; every backend call runs in a thread
pool because the backends (python-swiftclient, plain files) block.

Rules it keeps:

* A partial write reads the object first (read-modify-write); a write that
  covers a whole object does not.
* Dirty objects are written back in parallel; an object written many times
  between two write-backs is uploaded once (coalescing).  At most one upload
  of a given object is in flight, so an older copy can never land after a
  newer one.
* :meth:`flush` returns only once every object dirty at the time of the call
  is stored in the backend; a FUA write flushes the objects it touched.
* An object that is all zeros when it is written back is deleted instead of
  stored (objects that do not exist read as zeros), unless the client asked
  for allocated zeros (WRITE_ZEROES with NO_HOLE).
* When the cache is over its size, clean objects are dropped least recently
  used first; dirty ones are written back before they may be dropped, and a
  writer waits (backpressure) while the cache is full of dirty data.
* An object written all over since its last upload is uploaded at once: a
  sequential writer has moved past it, and the upload overlaps the writes
  that follow instead of queueing behind them at the next FLUSH.
* A small read that does not follow the previous one, of an object not in
  the cache, fetches just its bytes (``read_range``); an object read that way
  again while still among the last *cache capacity* objects read by range is
  loaded whole (it has locality, and would stay cached).  Scattered 4 KiB
  reads of 4 MiB objects would otherwise move a thousand times the bytes
  asked for, and evict each object before its next read.
* Objects are stored and deleted through one writer: the device's Lease (a
  writable export always gives one), or an unlocked writer for a device
  written without its lock (tests, embedding).  :meth:`ObjectCache.abort`
  (the lease is lost) fails every pending and later FLUSH, FUA and write
  at once, and nothing more is stored.
* A retry budget (``retry_attempts`` failed uploads in a row, or
  ``retry_time`` seconds of failures) bounds how long anyone waits for a
  failing backend: once spent, FLUSH and FUA fail at once, writers needing
  room fail, readers stop waiting for room, and one dirty object is retried
  now and then until the backend is back.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import time
from collections.abc import Iterable

from stowkit.corelib.blocklease import ObjectWriter, UnlockedWriter
from stowkit.corelib.blockstore import (
    BlockDevice,
    BlockStore,
    BlockStoreCapability,
    is_zeros,
    zeros,
)
from stowkit.corelib.errors import BackendUnavailable, NotFound
from stowkit.corelib.nbd.buffers import BufferPool

LOG = logging.getLogger(__name__)

#: Bytes an entry without data (a known hole) is charged, so that a huge run
#: of holes cannot grow the index without bound.
_HOLE_COST = 128


class BackendFailing(BackendUnavailable):
    """Write-back kept failing for the whole retry budget; FLUSH/FUA get EIO meanwhile."""


class _Entry:
    __slots__ = ("data", "dirty", "version", "upload", "pins", "keep", "fresh", "lent", "unread")

    def __init__(self, data: bytes | bytearray | None) -> None:
        # None: all zeros (the object need not exist).  bytes as loaded, made a
        # bytearray by the first write (copy on write: reads never copy twice).
        self.data = data
        self.dirty = False
        self.version = 0
        self.upload: asyncio.Task | None = None
        self.pins = 0  # requests using this entry right now; never evicted while > 0
        self.keep = False  # store zeros as a real object (NO_HOLE)
        self.fresh = 0  # bytes written since its last upload began
        self.lent = False  # ``data`` is being sent by an upload: copy before changing it
        self.unread = False  # loaded ahead of its reader, not used yet


class CacheStats:
    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        self.uploads = 0
        self.deletes = 0
        self.prefetched = 0
        self.ranged = 0
        self.early_uploads = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


class ObjectCache:
    """Write-back cache of ``device``'s objects held in ``store``.

    ``capacity`` is in bytes.  ``trust_listing`` lets the cache believe the
    object listing taken at start (true while this process holds the device
    lock: nobody else writes), which spares a backend round trip for every
    object that does not exist.
    """

    def __init__(
        self,
        store: BlockStore,
        device: BlockDevice,
        capacity: int = 64 << 20,
        workers: int = 16,
        readahead: int = 4 << 20,
        trust_listing: bool = True,
        executor: concurrent.futures.Executor | None = None,
        ranged_reads: bool | None = None,
        gate: asyncio.Future | None = None,
        writer: ObjectWriter | None = None,
        retry_time: float = 60.0,
        retry_attempts: int = 5,
    ) -> None:
        self.store = store
        self.device = device
        store.remember_geometry(device)  # its object calls check against it
        self.osize = device.object_size
        self.capacity = max(capacity, 2 * self.osize)
        self.workers = max(1, workers)
        self.readahead = max(0, readahead // self.osize)
        self.trust_listing = trust_listing
        # Awaited before anything is stored: the export's lock confirmation.
        self._gate = gate
        # The only path to storing or deleting objects: the export's Lease, or
        # without one an unlocked writer (tests, embedding).
        self.writer: ObjectWriter = writer or UnlockedWriter(store, device.name)
        self._aborted: BaseException | None = None
        # The retry budget: consecutive failed uploads, since when, the last error.
        self.retry_time = retry_time
        self.retry_attempts = max(1, retry_attempts)
        self._failing_since: float | None = None
        self._failed_attempts = 0
        self._last_error: BaseException | None = None
        self._probe: asyncio.Task | None = None
        self._closed = False
        self._abort_event = asyncio.Event()
        if ranged_reads is None:
            ranged_reads = store.supports(BlockStoreCapability.RANGED_READ)
        self.ranged_reads = ranged_reads
        self._ranged_once: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._own_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(
            self.workers, thread_name_prefix=f"nbd-{device.name}"
        )
        self._entries: collections.OrderedDict[int, _Entry] = collections.OrderedDict()
        self._loading: dict[int, asyncio.Future] = {}
        self._bytes = 0
        self._reserved = 0  # room taken by writes admitted, not copied in yet
        self._dirty_bytes = 0
        self._background: set[asyncio.Task] = set()
        self._changed = asyncio.Event()
        self._streams = ReadStreams(window=min(256 << 10, self.osize // 2))
        self._zeros = memoryview(zeros(self.osize))  # slices of it cost no copy
        # Object buffers let go of are reused (for the next payloads and
        # objects): an eighth of the cache's size is kept at most.
        self._pool = BufferPool(self.osize, max(self.capacity // 8, self.osize))
        self.exists: set[int] = set()
        self.stats = CacheStats()
        self.failures = 0  # background write-backs that failed (the data stays dirty)

    # -- bookkeeping --------------------------------------------------------------
    def object_length(self, index: int) -> int:
        return min(self.osize, self.device.size - index * self.osize)

    def _cost(self, entry: _Entry, index: int) -> int:
        return _HOLE_COST if entry.data is None else self.object_length(index)

    def _set_data(self, index: int, entry: _Entry, data: bytes | bytearray | None) -> None:
        self._bytes -= self._cost(entry, index)
        old, entry.data = entry.data, data
        entry.lent = False  # an upload still sending the old buffer keeps it
        self._bytes += self._cost(entry, index)
        if old is not data:
            self._pool.give_back(old)

    def payload_buffer(self, length: int) -> bytearray | None:
        """A reused buffer for a WRITE payload of one object's size (None: make one)."""
        return self._pool.take() if length == self.osize else None

    def _writable(self, index: int, entry: _Entry) -> bytearray:
        """``entry``'s data as a bytearray to change in place (zeros if a hole)."""
        if entry.data is None:
            length = self.object_length(index)
            buf = self._pool.zeroed() if length == self.osize else bytearray(length)
            self._set_data(index, entry, buf)
        elif entry.lent or not isinstance(entry.data, bytearray):
            # Copy on write: an upload is sending this buffer as it is (it
            # goes back to the pool when that upload is done with it).
            entry.data = self._pool.copy(entry.data)
            entry.lent = False
        return entry.data

    def _mark_dirty(self, index: int, entry: _Entry) -> None:
        entry.version += 1
        if not entry.dirty:
            entry.dirty = True
            self._dirty_bytes += self.object_length(index)

    @property
    def dirty_bytes(self) -> int:
        return self._dirty_bytes

    @property
    def cached_bytes(self) -> int:
        return self._bytes

    async def _call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def start(self) -> None:
        """Learn which objects exist (for block status and to skip loading holes)."""
        names = await self._call(lambda: set(self.store.list_objects(self.device.name)))
        self.exists = {i for i in names if 0 <= i < self.device.object_count}

    # -- loading ------------------------------------------------------------------
    async def _load(self, index: int, ahead: bool = False) -> None:
        try:
            if self.trust_listing and index not in self.exists:
                data = None
            else:
                raw = await self._call(self.store.read_object, self.device.name, index)
                length = self.object_length(index)
                if raw is None:
                    data = None
                elif len(raw) == length:
                    data = raw  # kept as it came: no copy until a write
                else:  # a short object reads as zero-padded (a long one, cut)
                    data = bytearray(raw[:length])
                    data.extend(bytes(length - len(data)))
            if index not in self._entries:  # a whole-object write may have won the race
                entry = _Entry(data)
                entry.unread = ahead
                self._entries[index] = entry
                self._bytes += self._cost(entry, index)
        finally:
            del self._loading[index]

    async def _acquire(self, index: int, load: bool = True) -> _Entry:
        """The pinned entry of ``index``; the caller must :meth:`_release` it."""
        while True:
            entry = self._entries.get(index)
            if entry is not None:
                self._entries.move_to_end(index)
                entry.pins += 1
                entry.unread = False
                self.stats.hits += 1
                return entry
            if not load:
                entry = _Entry(None)
                self._entries[index] = entry
                self._bytes += _HOLE_COST
                entry.pins += 1
                return entry
            task = self._loading.get(index)
            if task is None:
                self.stats.misses += 1
                task = asyncio.ensure_future(self._load(index))
                self._loading[index] = task
            await asyncio.shield(task)

    def _release(self, entry: _Entry) -> None:
        entry.pins -= 1

    async def _acquire_all(self, indices: list[int]) -> list[_Entry]:
        """The pinned entries of ``indices``, loaded in parallel; on a failure none stays pinned."""
        results = await asyncio.gather(*(self._acquire(i) for i in indices), return_exceptions=True)
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            for result in results:
                if isinstance(result, _Entry):
                    self._release(result)
            raise failure
        return results  # type: ignore[return-value]

    def _prefetch(self, first: int, count: int) -> None:
        last = min(first + count, self.device.object_count)
        for index in range(first, last):
            if index in self._entries or index in self._loading:
                continue
            if self.trust_listing and index not in self.exists:
                continue
            # Objects a sequential reader has gone past make way; objects
            # loaded ahead and not read yet do not (that would be thrashing).
            if not self._evict_clean(self.capacity - self.osize, spare_unread=True):
                break
            self.stats.prefetched += 1
            task = asyncio.ensure_future(self._load(index, ahead=True))
            self._loading[index] = task
            task.add_done_callback(_ignore_result)

    # -- the operations ---------------------------------------------------------------
    def _span(self, offset: int, length: int) -> Iterable[tuple[int, int, int, int]]:
        """(index, start in object, end in object, position in request) over a range."""
        pos = 0
        while pos < length:
            index, start = divmod(offset + pos, self.osize)
            end = min(self.object_length(index), start + length - pos)
            yield index, start, end, pos
            pos += end - start

    async def read(self, offset: int, length: int) -> bytes | memoryview:
        spans = list(self._span(offset, length))
        if not spans:
            return b""
        first, last = spans[0][0], spans[-1][0]
        sequential = self._streams.follows(offset, length)
        if self.readahead and sequential:
            self._prefetch(last + 1, self.readahead)
        if not sequential and first == last and self._by_range(first, length):
            _, start, end, _ = spans[0]
            data = await self._call(self.store.read_range, self.device.name, first, start, length)
            self.stats.ranged += 1
            # A write that raced with this read may be newer: that order is
            # the client's to choose (it had not been answered yet).
            return self._zeros[:length] if data is None else data
        entries = await self._acquire_all([s[0] for s in spans])
        try:
            parts = [
                self._zeros[: end - start]
                if entry.data is None
                else memoryview(entry.data)[start:end]
                for (_, start, end, _pos), entry in zip(spans, entries, strict=True)
            ]
            if len(parts) == 1 and not isinstance(entries[0].data, bytearray):
                out = parts[0]  # immutable (as loaded, or zeros): no copy at all
            else:
                # One copy, made before any await: a bytearray may change after.
                out = b"".join(parts)
        finally:
            for entry in entries:
                self._release(entry)
        await self._make_room()
        return out

    def _by_range(self, index: int, length: int) -> bool:
        """Whether a scattered read of ``length`` bytes of ``index`` should fetch just those."""
        if not self.ranged_reads or length * 4 > self.osize:
            return False
        if index in self._entries or index in self._loading:
            return False  # the cache has it, or it is on its way
        if self.trust_listing and index not in self.exists:
            return False  # a hole: the cache answers without a request
        if index in self._ranged_once:
            del self._ranged_once[index]
            return False  # read by range before: worth loading whole now
        self._ranged_once[index] = None
        if len(self._ranged_once) > max(4, self.capacity // self.osize):
            self._ranged_once.popitem(last=False)
        return True

    # -- the lease lost ----------------------------------------------------------------
    def abort(self, error: BaseException) -> None:
        """Nothing more may be stored (the lease is lost): fail every waiter now and later.

        Pending FLUSHes, FUA writes and writers waiting for room get ``error``
        at once; dirty data stays in memory (it can no longer be stored) and
        is reported by :meth:`close`.
        """
        if self._aborted is None:
            self._aborted = error
            self._abort_event.set()
            self._changed.set()

    @property
    def aborted(self) -> BaseException | None:
        return self._aborted

    def _check_aborted(self) -> None:
        if self._aborted is not None:
            raise self._aborted

    async def _or_abort(self, awaitable) -> object:
        """Await ``awaitable``, or raise the abort error as soon as the cache is aborted."""
        task = asyncio.ensure_future(awaitable)
        if task.done() or self._aborted is not None:
            if not task.done():
                task.add_done_callback(_ignore_result)
                self._check_aborted()
            return task.result()
        stop = asyncio.ensure_future(self._abort_event.wait())
        try:
            await asyncio.wait([task, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if task.done():
            return task.result()
        task.add_done_callback(_ignore_result)
        self._check_aborted()
        return None

    def unstored(self) -> list[int]:
        """Indexes of the objects whose latest data is not stored."""
        return sorted(i for i, e in self._entries.items() if e.dirty)

    async def write(
        self, offset: int, data: bytes | memoryview, fua: bool = False, given: bool = False
    ) -> None:
        """Write ``data`` at ``offset``.  ``given``: ``data`` is a bytearray the caller
        gives up (a request's payload); one covering exactly one object becomes
        that object's buffer, without a copy."""
        self._check_aborted()
        view = memoryview(data)
        # Room first, then the copy: copied in before waiting, every writer
        # waiting for room would hold its bytes twice (payload and cache), and
        # the cache would grow by all of them past its size.
        grows = sum(
            self.object_length(i)
            for i, _, _, _ in self._span(offset, len(view))
            if (entry := self._entries.get(i)) is None or entry.data is None
        )
        # The room is reserved when found, until the bytes are copied in
        # (loading may await): writers admitted together must not all count
        # the same free room.
        reserved = 0
        if grows:
            room = self._make_room(raise_on_failure=True, need=grows, reserve=True)
            reserved = await self._or_abort(room) or 0
        touched = []
        try:
            self._check_aborted()
            for index, start, end, pos in self._span(offset, len(view)):
                whole = start == 0 and end == self.object_length(index)
                entry = await self._acquire(index, load=not whole)
                try:
                    if whole and given and type(data) is bytearray and len(view) == end:
                        self._set_data(index, entry, data)  # the payload itself
                    elif whole:
                        self._set_data(index, entry, self._pool.copy(view[pos : pos + end]))
                    else:
                        self._writable(index, entry)[start:end] = view[pos : pos + end - start]
                    entry.keep = False
                    entry.fresh += end - start
                    self._mark_dirty(index, entry)
                finally:
                    self._release(entry)
                touched.append(index)
        finally:
            if reserved:
                self._reserved -= reserved
                self._changed.set()
        if not fua:
            self._upload_complete(touched)
        await self._after_write(touched, fua)

    def _upload_complete(self, indices: list[int]) -> None:
        """Start uploading the objects written all over since their last upload."""
        for index in indices:
            entry = self._entries.get(index)
            if (
                entry is not None
                and entry.dirty
                and entry.upload is None
                and entry.fresh >= self.object_length(index)
                and len(self._background) < self.workers * 2
            ):
                self.stats.early_uploads += 1
                self._upload_in_background(index, entry)

    async def zero(self, offset: int, length: int, punch: bool = True, fua: bool = False) -> None:
        """Make a range read as zeros: TRIM and WRITE_ZEROES.

        Whole objects become holes (deleted on write-back) unless ``punch`` is
        false (NO_HOLE), in which case they are stored as real zero objects.
        """
        self._check_aborted()
        touched = []
        for index, start, end, _ in self._span(offset, length):
            olen = self.object_length(index)
            whole = start == 0 and end == olen
            if whole and punch and self.trust_listing:
                entry = self._entries.get(index)
                if index not in self.exists and (entry is None or entry.data is None):
                    continue  # already a hole, nothing to store
            entry = await self._acquire(index, load=not whole)
            try:
                if whole and punch:
                    self._set_data(index, entry, None)
                    entry.keep = False
                elif not punch:
                    self._writable(index, entry)[start:end] = self._zeros[: end - start]
                    entry.keep = True
                elif entry.data is not None:
                    self._writable(index, entry)[start:end] = self._zeros[: end - start]
                else:
                    continue  # zeros already
                self._mark_dirty(index, entry)
            finally:
                self._release(entry)
            touched.append(index)
        await self._after_write(touched, fua)

    async def _after_write(self, touched: list[int], fua: bool) -> None:
        if fua:
            await self.flush(touched)
        self._background_writeback()
        await self._or_abort(self._make_room(raise_on_failure=True))
        self._check_aborted()

    def extents(self, offset: int, length: int) -> list[tuple[int, int]]:
        """base:allocation extents (length, HOLE|ZERO flags) from what exists."""
        from stowkit.corelib.nbd.protocol import STATE_HOLE, STATE_ZERO

        runs: list[list[int]] = []
        for index, start, end, _ in self._span(offset, length):
            entry = self._entries.get(index)
            if entry is not None and (entry.dirty or not self.trust_listing):
                hole = entry.data is None
            else:
                hole = index not in self.exists
            state = STATE_HOLE | STATE_ZERO if hole else 0
            if runs and runs[-1][1] == state:
                runs[-1][0] += end - start
            else:
                runs.append([end - start, state])
        return [(n, s) for n, s in runs]

    # -- write-back -------------------------------------------------------------------
    async def _store(self, index: int, entry: _Entry) -> None:
        self._check_aborted()
        if self._gate is not None:
            await asyncio.shield(self._gate)  # raises if the lock is not ours
        self._check_aborted()
        version = entry.version
        entry.fresh = 0
        data = entry.data
        keep = entry.keep
        if data is None or (not keep and is_zeros(data)):
            try:
                await self._call(self.writer.delete_object, index)
            except NotFound:
                pass
            self.exists.discard(index)
            self.stats.deletes += 1
            stored_hole = True
        else:
            # The upload sends the cached buffer itself when the backend can
            # (lend_body); a write meanwhile copies it first (_writable).
            # Otherwise one snapshot, in the form the backend sends as is,
            # which then replaces the bytearray in the cache (one buffer for
            # both; the next write copies it back).
            body = self.store.lend_body(data) if isinstance(data, bytearray) else None
            if body is not None:
                entry.lent = True
            else:
                body = self.store.upload_body(data)
                if entry.data is data and isinstance(data, bytearray):
                    entry.data = body
            try:
                await self._call(self.writer.write_object, index, body)
            finally:
                del body
                if entry.data is data:
                    entry.lent = False  # sent (or given up): its own again
            if entry.data is not data:
                # Replaced by a copy while it was being sent.
                self._pool.give_back(data)
            del data
            self.exists.add(index)
            self.stats.uploads += 1
            stored_hole = False
        if entry.version == version and entry.dirty:
            entry.dirty = False
            self._dirty_bytes -= self.object_length(index)
            if stored_hole and entry.data is not None:
                self._set_data(index, entry, None)  # free the zeros

    async def _upload(self, index: int, entry: _Entry) -> None:
        """Write ``entry`` back if dirty, after any upload of it already in flight."""
        while True:
            while entry.upload is not None:
                # Its error belongs to its own waiter; we check ``dirty`` after.
                await asyncio.wait([entry.upload])
            if not entry.dirty:
                return
            task = asyncio.ensure_future(self._store_then_clear(index, entry))
            entry.upload = task
            await asyncio.shield(task)
            return

    async def _store_then_clear(self, index: int, entry: _Entry) -> None:
        try:
            await self._store(index, entry)
        except Exception as err:
            if self._aborted is None:
                self._note_failure(err)
            raise
        else:
            self._note_success()
        finally:
            # Cleared by the task itself, so nobody can ever wait on a
            # finished upload (that would spin without yielding).
            entry.upload = None
            self._changed.set()

    def _upload_in_background(self, index: int, entry: _Entry) -> None:
        task = asyncio.ensure_future(self._upload(index, entry))
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        self._changed.set()
        if not task.cancelled() and task.exception() is not None:
            self.failures += 1
            LOG.warning("write-back of %s failed: %s", self.device.name, task.exception())

    # -- the retry budget -------------------------------------------------------------
    def _note_failure(self, err: BaseException) -> None:
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        self._failed_attempts += 1
        self._last_error = err
        if self.backend_failing and (self._probe is None or self._probe.done()):
            LOG.error(
                "device %s: write-back keeps failing (%d attempts in %.0f s): %s; "
                "FLUSH and FUA get EIO until the backend is back",
                self.device.name,
                self._failed_attempts,
                time.monotonic() - self._failing_since,
                err,
            )
            if not self._closed:
                self._probe = asyncio.ensure_future(self._probe_backend())

    def _note_success(self) -> None:
        if self._failing_since is not None and self.backend_failing:
            LOG.warning("device %s: the backend is back, writing back again", self.device.name)
        self._failing_since = None
        self._failed_attempts = 0
        self._last_error = None

    @property
    def backend_failing(self) -> bool:
        """True once write-back failed ``retry_attempts`` times in a row, or for ``retry_time``."""
        if self._failing_since is None:
            return False
        return (
            self._failed_attempts >= self.retry_attempts
            or time.monotonic() - self._failing_since >= self.retry_time
        )

    def _failing_error(self) -> BackendFailing:
        error = BackendFailing(
            f"device {self.device.name}: write-back failed {self._failed_attempts} times "
            f"in a row: {self._last_error}"
        )
        error.__cause__ = self._last_error  # what it was: the NBD errno follows it
        return error

    async def _probe_backend(self) -> None:
        """While the budget is spent, retry the oldest dirty object now and then."""
        interval = min(5.0, max(self.retry_time / 4, 0.05))
        while self.backend_failing and self._aborted is None and not self._closed:
            await asyncio.sleep(interval)
            await self.retry_now()

    async def retry_now(self) -> None:
        """While the retry budget is spent: try the oldest dirty object once, now (the
        probe's step; also when a new client arrives: the backend may be back);
        once it is stored, write-back resumes."""
        if not self.backend_failing or self._aborted is not None or self._closed:
            return
        target = next(((i, e) for i, e in self._entries.items() if e.dirty), None)
        if target is None:
            self._note_success()  # nothing is left to store: not failing any more
        else:
            try:
                await self._upload(*target)
            except Exception:
                return  # still failing
        if not self.backend_failing and self._aborted is None:
            self._background_writeback_all()

    def _background_writeback(self) -> None:
        """Start writing back the oldest dirty objects once a quarter of the cache is dirty."""
        if self._dirty_bytes * 4 < self.capacity or self.backend_failing:
            return
        room = self.workers * 2 - len(self._background)
        if room <= 0:
            return
        for index, entry in self._entries.items():
            if entry.dirty and entry.upload is None and entry.pins == 0:
                self._upload_in_background(index, entry)
                room -= 1
                if room <= 0:
                    break

    def _budget_left(self) -> float | None:
        if self._failing_since is None:
            return None
        return max(0.05, self._failing_since + self.retry_time - time.monotonic())

    async def _make_room(
        self, raise_on_failure: bool = False, need: int = 0, reserve: bool = False
    ) -> int:
        """Evict clean objects; while only dirty ones are left, write back and wait.

        ``need``: bytes about to be added (a write's new objects), at most the
        whole cache; with ``reserve`` they are reserved as soon as there is
        room, and returned (the caller gives them back once copied in; 0 if
        the cache was aborted).  Once the retry budget is spent, readers stop
        waiting (the cache goes over its size) and writers get BackendFailing.
        """
        await self._room_for(need, raise_on_failure)
        if not reserve or not need or self._aborted is not None:
            return 0
        self._reserved += need
        return need

    async def _room_for(self, need: int, raise_on_failure: bool) -> None:
        limit = self.capacity - min(need, self.capacity)
        while self._bytes + self._reserved > limit and self._aborted is None:
            # Cleared before looking, so a write-back finishing after the
            # look wakes us up rather than being missed.
            self._changed.clear()
            if self._evict_clean(limit):
                return
            if self.backend_failing:
                if raise_on_failure:
                    raise self._failing_error()
                return  # reads: let it overflow until the backend is back
            self._background_writeback_all()
            if (
                not self._background
                and not self._reserved  # admitted writes wake us once copied in
                and not any(e.upload is not None for e in self._entries.values())
            ):
                return  # everything left is pinned by running requests: let it overflow
            failures = self.failures
            try:
                await asyncio.wait_for(self._changed.wait(), self._budget_left())
            except TimeoutError:
                continue  # loops to the check above
            if self.failures != failures:
                await asyncio.sleep(0.5)  # the backend is failing: do not hammer it

    def _evict_clean(self, limit: int, spare_unread: bool = False) -> bool:
        """Drop clean objects nobody uses, oldest first, down to ``limit`` bytes held
        (reservations included); whether the cache is within it now."""
        for index in list(self._entries):
            if self._bytes + self._reserved <= limit:
                return True
            entry = self._entries[index]
            if entry.dirty or entry.pins or entry.upload is not None:
                continue
            if spare_unread and entry.unread:
                continue
            del self._entries[index]
            self._bytes -= self._cost(entry, index)
            data, entry.data = entry.data, None
            self._pool.give_back(data)
        return self._bytes + self._reserved <= limit

    def _background_writeback_all(self) -> None:
        if self.backend_failing:
            return  # the probe retries until the backend is back
        room = self.workers * 2 - len(self._background)
        for index, entry in self._entries.items():
            if room <= 0:
                break
            if entry.dirty and entry.upload is None:
                self._upload_in_background(index, entry)
                room -= 1

    async def flush(self, indices: Iterable[int] | None = None) -> None:
        """Return once every object dirty now is stored; raise the first failure.

        While the retry budget is spent, raise BackendFailing at once.
        """
        self._check_aborted()
        if indices is None:
            targets = [(i, e) for i, e in self._entries.items() if e.dirty or e.upload]
        else:
            targets = []
            for i in set(indices):
                entry = self._entries.get(i)
                if entry is not None and (entry.dirty or entry.upload):
                    targets.append((i, entry))
        if not targets:
            return
        if self.backend_failing:
            raise self._failing_error()
        results = await self._or_abort(
            asyncio.gather(*(self._upload(i, e) for i, e in targets), return_exceptions=True)
        )
        for result in results:  # type: ignore[union-attr]
            if isinstance(result, BaseException):
                raise result

    async def close(self, timeout: float | None = None) -> None:
        """Flush everything and stop the worker threads; say what could not be stored.

        Gives up after ``timeout`` seconds (or at once when the retry budget
        is spent or the lease is lost) and raises, after logging which
        objects were not stored.
        """
        try:
            await asyncio.wait_for(self.flush(), timeout)
        except BaseException as err:
            unstored = self.unstored()
            if unstored:
                LOG.error(
                    "device %s: %d objects (%d bytes) were not stored (%s): %s",
                    self.device.name,
                    len(unstored),
                    sum(self.object_length(i) for i in unstored),
                    _ranges(unstored),
                    str(err) or type(err).__name__,
                )
            if isinstance(err, TimeoutError):
                raise BackendFailing(
                    f"device {self.device.name}: write-back did not finish in {timeout:g} s"
                ) from None
            raise
        finally:
            self._closed = True
            if self._probe is not None:
                self._probe.cancel()
            if self._own_executor:
                self._executor.shutdown(wait=False)


class ReadStreams:
    """Tells reads that continue a recent read from scattered ones.

    Several sequential readers at once are common (nbdcopy opens four
    connections, each copying its own region), so the ends of the last few
    reads are kept, not just one.  A read continues a stream when it starts
    within ``window`` bytes of where that stream ended (requests of one
    reader may arrive a little out of order).
    """

    def __init__(self, window: int, streams: int = 8) -> None:
        self.window = window
        self._ends: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._max = streams

    def follows(self, offset: int, length: int) -> bool:
        match = next((e for e in self._ends if abs(offset - e) <= self.window), None)
        if match is not None:
            del self._ends[match]
        self._ends[offset + length] = None
        if len(self._ends) > self._max:
            self._ends.popitem(last=False)
        return match is not None


def _ranges(indices: list[int]) -> str:
    """'3, 7-9' for [3, 7, 8, 9] (sorted)."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _ignore_result(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()
