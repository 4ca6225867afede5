"""Whole-device copies between a BlockStore and a local file.

Both directions move objects in parallel from a thread pool (each worker
reads or writes its own slice of the file with pread/pwrite) and are sparse
aware: an all-zero object is never stored on upload (and a stored one is
deleted, so the device ends up equal to the file), and a missing object is
left as a hole on download.  Any BlockStore works; backends only have to
allow parallel object calls, which the interface requires.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import logging
import os
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator

from stowkit.corelib.blocklease import Lease, held, lease_for
from stowkit.corelib.blocklock import LeaseLost
from stowkit.corelib.blockstore import BlockStore, is_zeros
from stowkit.corelib.errors import BackendUnavailable, InvalidArgument

LOG = logging.getLogger(__name__)

#: progress(done_bytes, total_bytes), called from the calling thread.
Progress = Callable[[int, int], None]


@dataclasses.dataclass
class CopyStats:
    bytes: int = 0  # device bytes covered
    stored: int = 0  # objects written (upload) or read (download)
    holes: int = 0  # all-zero objects skipped
    deleted: int = 0  # objects deleted because the file has zeros there


def _data_extents(fd: int, size: int) -> list[tuple[int, int]] | None:
    """[(start, end)] of the file's data (not holes), or None if unknown."""
    extents = []
    pos = 0
    try:
        while pos < size:
            start = os.lseek(fd, pos, os.SEEK_DATA)
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            extents.append((start, end))
            pos = end
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # no data after pos: the rest is a hole
            return extents
        return None  # SEEK_DATA unsupported here: read everything
    return extents


def _may_hold_data(extents: list[tuple[int, int]] | None, start: int, end: int) -> bool:
    if extents is None:
        return True
    return any(s < end and start < e for s, e in extents)


def _run(
    jobs: Iterator[Callable[[], int]], threads: int, total: int, progress: Progress | None
) -> None:
    """Run jobs (each returns bytes covered) with at most 2*threads in flight."""
    done = 0
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        pending: set[concurrent.futures.Future[int]] = set()
        try:
            for job in jobs:
                pending.add(pool.submit(job))
                if len(pending) >= threads * 2:
                    finished, pending = concurrent.futures.wait(
                        pending, return_when=concurrent.futures.FIRST_COMPLETED
                    )
                    for fut in finished:
                        done += fut.result()
                    if progress:
                        progress(done, total)
            for fut in concurrent.futures.as_completed(pending):
                done += fut.result()
                if progress:
                    progress(done, total)
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise


#: Owner named by the lock upload() takes when its caller holds none.
UPLOAD_OWNER = "stowkit upload"


def upload(
    store: BlockStore | Lease,
    device: str,
    path: str,
    threads: int = 8,
    progress: Progress | None = None,
) -> CopyStats:
    """Make ``device`` hold the bytes of file ``path`` (zeros past its end).

    Every object goes through the device's :class:`Lease`: the one given as
    ``store``, else the one this process holds on the device through
    ``store`` (see :func:`stowkit.corelib.blocklease.held`), else one taken for the copy
    (:func:`~stowkit.corelib.blocklease.lease_for`).  Once the lease is lost
    nothing more is stored and LeaseLost is raised.
    """
    lease = lease_for(store, device)
    if lease is None:
        with held(store, device, UPLOAD_OWNER) as own:  # type: ignore[arg-type]
            return upload(own, device, path, threads, progress)
    lease.check()
    store = lease.store
    dev = store.get_device(device)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path}: {exc.strerror}") from None
    try:
        file_size = os.lseek(fd, 0, os.SEEK_END)
        if file_size > dev.size:
            raise InvalidArgument(
                f"{path} holds {file_size} bytes, more than device {device} ({dev.size} bytes)"
            )
        extents = _data_extents(fd, file_size)
        stored = set(store.list_objects(device))
        stats = CopyStats()
        lock = threading.Lock()
        osize = dev.object_size

        def one(index: int) -> int:
            start = index * osize
            data = b""
            if start < file_size and _may_hold_data(extents, start, start + osize):
                data = os.pread(fd, osize, start)
            if len(data) < osize:
                data += bytes(osize - len(data))
            if is_zeros(data):
                if index in stored:
                    lease.delete_object(index)
                    with lock:
                        stats.deleted += 1
                else:
                    with lock:
                        stats.holes += 1
            else:
                lease.write_object(index, data)
                with lock:
                    stats.stored += 1
            with lock:
                done.add(index)
            return osize

        done: set[int] = set()
        jobs = (lambda i=i: one(i) for i in range(dev.object_count))
        try:
            _run(jobs, threads, dev.size, progress)
        except LeaseLost as err:
            with lock:
                missing = [i for i in range(dev.object_count) if i not in done]
            try:  # the lease is lost: this goes to the local state file
                lease.record_unstored(missing, len(missing) * osize, f"upload of {path}: {err}")
            except Exception as record_err:
                LOG.error("device %s: could not record what was not stored: %s",
                          device, record_err)  # fmt: skip
            raise LeaseLost(
                f"{err}; upload stopped after {stats.stored} objects stored and "
                f"{stats.deleted} deleted: the device does not hold the file",
                err.holder,
            ) from None
        stats.bytes = dev.size
        try:  # the device holds the file whole now: what was not stored before is moot
            lease.clear_unstored()
        except Exception as err:
            LOG.warning("device %s: could not clear the record of unstored objects: %s",
                        device, err)  # fmt: skip
        return stats
    finally:
        os.close(fd)


def download(
    store: BlockStore,
    device: str,
    path: str,
    threads: int = 8,
    progress: Progress | None = None,
) -> CopyStats:
    """Write the whole of ``device`` into ``path`` (a file, or an existing block device).

    A regular file is written aside and renamed into place once complete,
    so ``path`` never holds half an image; holes stay holes.
    """
    dev = store.get_device(device)
    try:
        st: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise InvalidArgument(f"cannot write {path}: {exc.strerror}") from None
    regular = st is None or stat.S_ISREG(st.st_mode)
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise InvalidArgument(f"cannot write {path}: it is a directory")
    stored = set(store.list_objects(device))
    stats = CopyStats()
    counter = threading.Lock()
    osize = dev.object_size
    target = path
    if regular:
        directory = os.path.dirname(os.path.abspath(path))
        try:
            fd, target = tempfile.mkstemp(prefix=".stowkit-download-", dir=directory)
        except OSError as exc:
            raise InvalidArgument(f"cannot write in {directory}: {exc.strerror}") from None
    else:
        try:
            fd = os.open(path, os.O_WRONLY)
        except OSError as exc:
            raise InvalidArgument(f"cannot write {path}: {exc.strerror}") from None
    try:
        if regular:
            os.ftruncate(fd, dev.size)  # all holes to begin with

        def one(index: int) -> int:
            data = store.read_object(device, index) if index in stored else None
            if data is not None and len(data) != osize:
                raise BackendUnavailable(
                    f"device {device}: object {index} has {len(data)} bytes, expected {osize}"
                )
            if data is None or is_zeros(data):
                with counter:
                    stats.holes += 1
                if regular:
                    return osize
                data = bytes(osize)
            else:
                with counter:
                    stats.stored += 1
            view = memoryview(data)
            offset = index * osize
            while view:
                written = os.pwrite(fd, view, offset)
                view, offset = view[written:], offset + written
            return osize

        jobs = (lambda i=i: one(i) for i in range(dev.object_count))
        _run(jobs, threads, dev.size, progress)
        try:
            os.fsync(fd)
        except OSError as exc:
            if regular or exc.errno != errno.EINVAL:  # character devices cannot sync
                raise
    except BaseException:
        os.close(fd)
        if regular:
            os.unlink(target)
        raise
    os.close(fd)
    if regular:
        if st is not None:
            os.chmod(target, stat.S_IMODE(st.st_mode))
        else:
            os.chmod(target, 0o666 & ~_umask())
        os.replace(target, path)
    stats.bytes = dev.size
    return stats


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
