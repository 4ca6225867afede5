"""BlockStore on a local directory: the embedded default.

Same layout as a Swift container (see stowkit.corelib.blockstore), one directory per
device under ``[blockstore_local] path``::

    PATH/NAME/device.json             settings, written atomically
    PATH/NAME/disk.part/00000000      data objects (absent: zeros)
    PATH/NAME/stowkit.lock            the lock (created with link(): atomic, exclusive)

Every write goes to a temporary file that is fsync'ed, renamed into place,
and followed by an fsync of the directory, so a write_object that returned
survives a crash (an NBD FLUSH relies on it) and a reader never sees half an
object.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator, Sequence

from oslo_config import cfg

from stowkit.corelib import blocklock, blockstore, names
from stowkit.corelib.blockstore import OBJECT_PREFIX, BlockDevice, object_index, object_name
from stowkit.corelib.errors import AlreadyExists, BackendUnavailable, InvalidArgument, NotFound

SETTINGS = "device.json"
_TMP = ".tmp-"  # device names cannot start with a dot, so these never clash


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace(path: str, data: bytes, device: str, what: str) -> None:
    """Durably replace ``path`` with ``data``: temp file, fsync, rename, fsync the directory."""
    directory = os.path.dirname(path)
    try:
        tmp = _write_temp(directory, data)
        os.rename(tmp, path)
        _fsync_dir(directory)
    except FileNotFoundError:
        raise NotFound(f"device {device} not found") from None
    except OSError as exc:
        raise _os_error(exc, f"{what} of {device}") from None


def _write_temp(directory: str, data: bytes) -> str:
    """Write ``data`` durably to a new temporary file in ``directory``; its path."""
    tmp = os.path.join(directory, f"{_TMP}{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    return tmp


def _os_error(exc: OSError, what: str) -> BackendUnavailable:
    message = f"local block store: cannot {what}: {exc.strerror or exc}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return blockstore.StorageFull(message)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return blockstore.StorageDenied(message)
    return BackendUnavailable(message)


class LocalBlockStore(blockstore.BlockStore):
    """Block devices as directories of object files."""

    options = [
        cfg.StrOpt(
            "path",
            default="$state_dir/blocks",
            help="Directory holding one subdirectory per block device.",
        ),
    ]
    capabilities = frozenset({blockstore.BlockStoreCapability.RANGED_READ})  # a pread

    @property
    def root(self) -> str:
        return self.opts.path

    def _dir(self, name: str) -> str:
        return os.path.join(self.root, names.check_name(name, "device name"))

    # -- devices -------------------------------------------------------------

    def _create_device(self, name: str, size: int, object_size: int) -> BlockDevice:
        final = self._dir(name)
        try:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise _os_error(exc, f"create {self.root}") from None
        if os.path.lexists(final):
            raise AlreadyExists(f"device {name} already exists")
        # Build it aside and rename it into place, so a device is either
        # complete or absent.
        staging = os.path.join(self.root, f"{_TMP}{name}-{secrets.token_hex(4)}")
        try:
            os.mkdir(staging, 0o700)
            os.mkdir(os.path.join(staging, OBJECT_PREFIX.rstrip("/")), 0o700)
            settings = {
                "format": blockstore.FORMAT_VERSION,
                "size": size,
                "object_size": object_size,
                "created": time.time(),
            }
            tmp = _write_temp(staging, json.dumps(settings, indent=1).encode())
            os.rename(tmp, os.path.join(staging, SETTINGS))
            _fsync_dir(staging)
            try:
                os.rename(staging, final)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                    raise AlreadyExists(f"device {name} already exists") from None
                raise
            _fsync_dir(self.root)
        except OSError as exc:
            raise _os_error(exc, f"create device {name}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return BlockDevice(name, size, object_size, blockstore.FORMAT_VERSION)

    def _settings(self, name: str) -> dict:
        path = os.path.join(self._dir(name), SETTINGS)
        try:
            with open(path, "rb") as f:
                settings = json.load(f)
            return {
                "size": int(settings["size"]),
                "object_size": int(settings["object_size"]),
                "format": int(settings.get("format", blockstore.FORMAT_VERSION)),
            }
        except FileNotFoundError:
            raise NotFound(f"device {name} not found") from None
        except NotADirectoryError:
            raise NotFound(f"device {name} not found") from None
        except (ValueError, KeyError, TypeError):
            raise BackendUnavailable(f"device {name}: unreadable settings in {path}") from None
        except OSError as exc:
            raise _os_error(exc, f"read {path}") from None

    def _get_device(self, name: str, details: bool) -> BlockDevice:
        settings = self._settings(name)
        return BlockDevice(
            name,
            settings["size"],
            settings["object_size"],
            settings["format"],
            lock=blocklock.read_lock(self, name),
            objects_stored=sum(1 for _ in self.list_objects(name)) if details else None,
        )

    def list_devices(self, details: bool = False) -> Sequence[BlockDevice]:
        try:
            entries = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise _os_error(exc, f"list {self.root}") from None
        devices = []
        for entry in entries:
            if entry.startswith("."):
                continue
            try:
                names.check_name(entry)
                devices.append(self.get_device(entry, details))
            except (NotFound, InvalidArgument):
                continue  # not a device: stray file or directory
        return devices

    def _destroy_device(self, name: str) -> None:
        path = self._dir(name)
        # Settings first (the device stops existing), then the rest, so an
        # interrupted delete leaves nothing that looks like a device.
        doomed = os.path.join(self.root, f"{_TMP}deleting-{name}-{secrets.token_hex(4)}")
        try:
            os.rename(path, doomed)
            _fsync_dir(self.root)
            shutil.rmtree(doomed)
        except FileNotFoundError:
            raise NotFound(f"device {name} not found") from None
        except OSError as exc:
            raise _os_error(exc, f"delete device {name}") from None

    # -- objects -------------------------------------------------------------

    def _object_path(self, device: str, index: int) -> str:
        return os.path.join(self._dir(device), object_name(index))

    def _read_object(self, device: str, index: int) -> bytes | None:
        try:
            with open(self._object_path(device, index), "rb", buffering=0) as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _os_error(exc, f"read object {index} of {device}") from None

    def _read_range(self, device: str, index: int, start: int, length: int) -> bytes | None:
        try:
            with open(self._object_path(device, index), "rb", buffering=0) as f:
                data = os.pread(f.fileno(), length, start)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _os_error(exc, f"read object {index} of {device}") from None
        return data + bytes(length - len(data)) if len(data) < length else data

    def _write_object(self, device: str, index: int, data: bytes) -> None:
        _replace(self._object_path(device, index), data, device, f"write object {index}")

    def _delete_object(self, device: str, index: int) -> None:
        path = self._object_path(device, index)
        try:
            os.unlink(path)
            _fsync_dir(os.path.dirname(path))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _os_error(exc, f"delete object {index} of {device}") from None

    def _list_objects(self, device: str) -> Iterator[int]:
        directory = os.path.join(self._dir(device), OBJECT_PREFIX)
        try:
            entries = os.listdir(directory)
        except FileNotFoundError:
            self._settings(device)  # NotFound for a missing device
            return iter(())
        except OSError as exc:
            raise _os_error(exc, f"list objects of {device}") from None
        indexes = (object_index(OBJECT_PREFIX + entry) for entry in entries)
        return iter(sorted(i for i in indexes if i is not None))

    # -- control objects -----------------------------------------------------

    def _control_path(self, device: str, key: str) -> str:
        return os.path.join(self._dir(device), key)

    def _control_get(self, device: str, key: str) -> bytes | None:
        try:
            with open(self._control_path(device, key), "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise _os_error(exc, f"read {key} of {device}") from None

    def _control_create(self, device: str, key: str, data: bytes) -> bool:
        path = self._control_path(device, key)
        directory = os.path.dirname(path)
        try:
            tmp = _write_temp(directory, data)
        except FileNotFoundError:
            raise NotFound(f"device {device} not found") from None
        except OSError as exc:
            raise _os_error(exc, f"write {key} of {device}") from None
        try:
            # link() never replaces an existing name: the atomic create.
            os.link(tmp, path)
            _fsync_dir(directory)
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            raise _os_error(exc, f"create {key} of {device}") from None
        finally:
            os.unlink(tmp)

    def _control_replace(self, device: str, key: str, data: bytes) -> None:
        _replace(self._control_path(device, key), data, device, f"write {key}")

    def _control_delete(self, device: str, key: str) -> None:
        path = self._control_path(device, key)
        try:
            os.unlink(path)
            _fsync_dir(os.path.dirname(path))
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise _os_error(exc, f"delete {key} of {device}") from None
