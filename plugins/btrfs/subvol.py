"""Subvolume operations through libbtrfsutil, and the few ioctls it lacks.

Nothing here runs a process: a subvolume is created, snapshotted, inspected
and deleted with ioctls (libbtrfsutil), file flags with FS_IOC_SETFLAGS,
compression with the ``btrfs.compression`` xattr (what ``btrfs property
set ... compression`` writes), renames with ``renameat2`` so a rename never
replaces an existing volume.  Callers pass paths they built from checked names.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import ctypes.util
import datetime as dt
import errno
import fcntl
import os
import stat
import uuid as uuidlib
from typing import Any

from stowkit.corelib.errors import AlreadyExists, BackendUnavailable, NotFound

try:  # the bindings are an optional extra: stowkit[btrfs]
    import btrfsutil
except ImportError as exc:  # reported by `stowkit backends` and by the first call
    btrfsutil = None
    _IMPORT_ERROR: str | None = str(exc)
else:
    _IMPORT_ERROR = None

FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_NOCOW_FL = 0x00800000
COMPRESSION_XATTR = "btrfs.compression"
#: When stowkit made the subvolume at its path (create, clone, restore), as
#: ISO 8601 UTC.  A ``trusted.`` xattr: reading or changing it needs
#: CAP_SYS_ADMIN, so a container using the volume can neither see nor forge it.
CREATED_XATTR = "trusted.stowkit.created"
#: inode number of every subvolume's root directory (BTRFS_FIRST_FREE_OBJECTID)
SUBVOLUME_INODE = 256

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def missing_bindings() -> str | None:
    """Why libbtrfsutil's Python bindings are not usable here, or None when they are."""
    if btrfsutil is not None:
        return None
    return (
        f"the btrfs backend needs libbtrfsutil's Python bindings ({_IMPORT_ERROR}): "
        "apt-get install libbtrfsutil-dev; pip install btrfsutil==6.10"
    )


def require_bindings() -> None:
    reason = missing_bindings()
    if reason is not None:
        raise BackendUnavailable(reason)


def _fail(exc: BaseException, what: str, path: str) -> BackendUnavailable:
    err = getattr(exc, "errno", None)
    if err == errno.ENOENT:
        raise NotFound(f"{what}: {os.path.basename(path)} does not exist") from None
    if err == errno.EEXIST:
        raise AlreadyExists(f"{what}: {os.path.basename(path)} already exists") from None
    return BackendUnavailable(f"{what} failed for {path}: {exc}")


def is_subvolume(path: str) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_ino == SUBVOLUME_INODE


def _ioctl(what: str, path: str, call: str, *args: Any, **kwargs: Any) -> Any:
    """libbtrfsutil's ``call`` (by name: the module may be missing, or replaced in tests),
    its failures as stowkit errors about ``path``."""
    require_bindings()
    try:
        return getattr(btrfsutil, call)(*args, **kwargs)
    except (btrfsutil.BtrfsUtilError, OSError) as exc:
        raise _fail(exc, what, path) from exc


def create(path: str) -> None:
    _ioctl("create subvolume", path, "create_subvolume", path)


def snapshot(source: str, path: str, read_only: bool) -> None:
    _ioctl("snapshot", path, "create_snapshot", source, path, read_only=read_only)


def delete(path: str) -> None:
    _ioctl("delete subvolume", path, "delete_subvolume", path)


def sync(path: str) -> None:
    _ioctl("sync", path, "sync", path)


def _uuid(raw: bytes) -> str | None:
    return None if not any(raw) else str(uuidlib.UUID(bytes=bytes(raw)))


def info(path: str) -> dict[str, Any]:
    """uuid, parent_uuid, received_uuid (str or None), otime (aware UTC), read_only."""
    i = _ioctl("subvolume info", path, "subvolume_info", path)
    return {
        "id": i.id,
        "uuid": _uuid(i.uuid),
        "parent_uuid": _uuid(i.parent_uuid),
        "received_uuid": _uuid(i.received_uuid),
        "otime": dt.datetime.fromtimestamp(i.otime, dt.UTC),
        "read_only": bool(i.flags & 1),
    }


def subvolume_id(path: str) -> int:
    return _ioctl("subvolume id", path, "subvolume_id", path)


def mark_created(path: str, when: dt.datetime) -> None:
    """Record ``when`` as the creation time of the subvolume at ``path`` (see CREATED_XATTR).

    Best effort: without it the time is read from the subvolume (an ioctl) instead.
    """
    with contextlib.suppress(OSError):
        os.setxattr(path, CREATED_XATTR, when.astimezone(dt.UTC).isoformat().encode())


def created(path: str) -> dt.datetime | None:
    """The creation time recorded by :func:`mark_created`: one getxattr, no ioctl."""
    try:
        raw = os.getxattr(path, CREATED_XATTR, follow_symlinks=False)
        when = dt.datetime.fromisoformat(raw.decode())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def _flags(fd: int) -> int:
    buf = array.array("l", [0])
    fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf, True)
    return buf[0]


def set_nocow(path: str) -> None:
    """chattr +C on a directory: files created in it later are not copy-on-write."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        buf = array.array("l", [_flags(fd) | FS_NOCOW_FL])
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, buf, True)
    except OSError as exc:
        raise BackendUnavailable(f"cannot disable copy-on-write on {path}: {exc}") from exc
    finally:
        os.close(fd)


def is_nocow(path: str) -> bool:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return bool(_flags(fd) & FS_NOCOW_FL)
    finally:
        os.close(fd)


def set_compression(path: str, algorithm: str) -> None:
    try:
        os.setxattr(path, COMPRESSION_XATTR, algorithm.encode())
    except OSError as exc:
        raise BackendUnavailable(f"cannot set compression {algorithm} on {path}: {exc}") from exc


def compression(path: str) -> str:
    try:
        return os.getxattr(path, COMPRESSION_XATTR).decode() or "none"
    except OSError:
        return "none"


_libc: Any = None


def rename(src: str, dst: str, flags: int) -> None:
    """renameat2(2): RENAME_NOREPLACE never overwrites, RENAME_EXCHANGE swaps atomically."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    at_fdcwd = -100
    rc = _libc.renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags)
    if rc != 0:
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise AlreadyExists(f"{os.path.basename(dst)} already exists")
        raise BackendUnavailable(f"rename {src} -> {dst} failed: {os.strerror(err)}")


def used_bytes(path: str) -> int:
    """Bytes allocated by the files under ``path`` (like ``du -s``; shared extents count fully)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    stack = [path]
    while stack:
        top = stack.pop()
        try:
            entries = list(os.scandir(top))
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            total += st.st_blocks * 512
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
    return total
