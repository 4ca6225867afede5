"""BlockStore on OpenStack Swift: a device is a container of fixed-size objects.

Settings live in the container's metadata (``X-Container-Meta-Stowkit-Format``,
``-Size``, ``-Object-Size``); a swiftnbd container (``-Swiftnbd-Version``,
``-Objects``, ``-Object-Size``) is read as a device too, since its objects
have the same names.  Data objects are ``disk.part/NNNNNNNN``; one that is
absent reads as zeros, so a read is a single GET and a 404 means zeros (no
HEAD per object).  The lock is the object ``stowkit.lock``, created with
``If-None-Match: *``: Swift answers 412 when it exists, which makes creation
atomic.  Device creation uses the same trick: container PUTs are idempotent,
so of two concurrent ``setup``s both would succeed and the later settings
win; the settings object ``stowkit.device`` is created with
``If-None-Match: *`` first, and only its one creator goes on.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import hashlib
import json
import logging
import secrets
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from oslo_config import cfg
from swiftclient.exceptions import ClientException

from stowkit.corelib import blocklock, names
from stowkit.corelib.blockstore import (
    FORMAT_VERSION,
    OBJECT_PREFIX,
    BlockDevice,
    BlockStore,
    BlockStoreCapability,
    StorageDenied,
    StorageFull,
    object_index,
    object_name,
)
from stowkit.corelib.errors import AlreadyExists, BackendUnavailable, Conflict, NotFound
from stowkit.plugins.openstack_auth import AuthOptions
from stowkit.plugins.swift.auth import (
    OPTIONS,
    ConnectionFactory,
    describe_error,
    is_transport_error,
)

META = "x-container-meta-stowkit-"
LEGACY_META = "x-container-meta-swiftnbd-"
LEGACY_OBJECT_SIZE = 64 << 10  # swiftnbd's default, when its header got lost
#: The settings as an object, created atomically: it decides who creates a device.
SETTINGS_KEY = "stowkit.device"

T = TypeVar("T")


class Resendable(bytes):
    """A PUT body python-swiftclient may send again.

    swiftclient retries a PUT (on 5xx, timeouts, connection errors) only when
    its body is a str or can be rewound (``tell``/``seek``); plain bytes make
    it give up at the first failure ("no ability to reset contents for
    reupload"), so one 503 failed the upload.  Bytes never move: rewinding is
    nothing to do, and the body still goes out whole (no ``read``: not
    streamed in 64 KiB chunks).
    """

    def tell(self) -> int:
        return 0

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0


def lent_body(data: bytearray) -> Any:
    """``data`` as a PUT body swiftclient sends as it is, without a copy.

    swiftclient turns anything iterable that is not bytes (a bytearray, a
    memoryview) into an iterator of single bytes; requests and urllib3 take a
    body with the buffer protocol and no ``__iter__`` as one buffer, which
    ``socket.sendall`` sends from where it lies.  A ctypes array over the
    bytearray is exactly that (and ``tell``/``seek`` make it resendable, as
    :class:`Resendable`).  The caller keeps ``data`` unchanged until the PUT
    returned.
    """
    return _lent_type(len(data)).from_buffer(data)


def _forget_request_body(conn: Any) -> None:
    """Drop swiftclient's hold on the body just sent.

    swiftclient keeps its last response, and through it the request and its
    body, until the connection's next request: a lent buffer (the NBD cache's
    own) would stay exported that long, and the cache could not reuse it.
    """
    http = conn.http_conn[1] if getattr(conn, "http_conn", None) else None
    request = getattr(getattr(http, "resp", None), "request", None)
    if request is not None:
        request.body = None


_LENT_TYPES: dict[int, type] = {}


class _Lent:
    """Marks a lent body: rewinding is nothing to do (the buffer never moves)."""

    def tell(self) -> int:
        return 0

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0


def _lent_type(size: int) -> type:
    cls = _LENT_TYPES.get(size)
    if cls is None:
        cls = _LENT_TYPES[size] = type(f"LentBody{size}", (_Lent, ctypes.c_char * size), {})
    return cls


def _settings_token(raw: bytes | None) -> str | None:
    """The token of the setup that created a settings object (None: absent, unreadable)."""
    try:
        return json.loads(raw)["token"] if raw is not None else None
    except (ValueError, KeyError, TypeError):
        return None


class SwiftBlockStore(BlockStore):
    """Block devices as Swift containers."""

    # ``cloud``, keystoneauth1's auth options (auth_type, auth_url, ...; shared by
    # every OpenStack backend), then Swift's own.
    options = AuthOptions(
        [
            *OPTIONS,
            # Registered here rather than in auth.py: it names containers, not credentials.
            cfg.StrOpt(
                "container_prefix",
                default="",
                help="Prefix of the containers that hold devices: device NAME lives in "
                "container PREFIX+NAME; list shows only containers with it.",
            ),
            cfg.FloatOpt(
                "create_settle",
                default=0.25,
                min=0.0,
                help="Seconds to wait before checking that an atomic create (device lock, "
                "device setup) really was ours: Swift checks If-None-Match when a PUT "
                "starts, so PUTs that start together may all succeed and the newest "
                "stays.  Longer than any small PUT takes on this Swift.",
            ),
            cfg.BoolOpt(
                "send_etag",
                default=True,
                help="Send each object's MD5 so Swift rejects a corrupted upload.",
            ),
        ]
    )
    capabilities = frozenset({BlockStoreCapability.RANGED_READ})  # a ranged GET
    # keystoneauth1: Keystone sessions, and the transport errors of every mode.
    client_modules = ("swiftclient", "keystoneauth1")

    def __init__(self, conf: Any, group: str) -> None:
        super().__init__(conf, group)
        self._factory: ConnectionFactory | None = None
        # swiftclient logs every 4xx answer (each hole read is a 404) at INFO;
        # failures that matter reach the user through our own errors.
        logging.getLogger("swiftclient").setLevel(logging.WARNING)

    # -- plumbing ------------------------------------------------------------

    @property
    def factory(self) -> ConnectionFactory:
        if self._factory is None:
            self._factory = ConnectionFactory(self.opts, self.conf, self.group)
        return self._factory

    @property
    def settle_seconds(self) -> float:  # type: ignore[override]
        return self.opts.create_settle

    def close(self) -> None:
        if self._factory is not None:
            self._factory.close()

    def _container(self, name: str) -> str:
        return self.opts.container_prefix + names.check_name(name, "device name")

    def record_name(self, device: str) -> str:
        # The container: two prefixes on one host are two devices.
        return self._container(device)

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a swiftclient call on this thread's connection, mapping failures."""
        conn = self.factory.get()
        try:
            return fn(conn, *args, **kwargs)
        except ClientException as exc:
            if exc.http_status in (401, 403):
                raise StorageDenied(
                    f"swift refused to {what}: {describe_error(exc)} (check credentials)"
                ) from None
            if exc.http_status in (413, 507):  # over quota; no space on the object servers
                raise StorageFull(f"swift: cannot {what}: {describe_error(exc)}") from None
            raise BackendUnavailable(f"swift: cannot {what}: {describe_error(exc)}") from None
        except Exception as exc:
            if is_transport_error(exc):
                raise BackendUnavailable(f"swift: cannot {what}: {describe_error(exc)}") from None
            raise

    def _parallel(self, fn: Callable[[T], Any], items: Sequence[T]) -> list[Any]:
        if len(items) <= 1:
            return [fn(item) for item in items]
        with concurrent.futures.ThreadPoolExecutor(self.opts.threads) as pool:
            return list(pool.map(fn, items))

    @staticmethod
    def _status(exc: BaseException) -> int | None:
        return getattr(exc, "http_status", None)

    # -- devices -------------------------------------------------------------

    def _head(self, name: str) -> dict[str, str] | None:
        container = self._container(name)

        def head(conn: Any) -> dict[str, str] | None:
            try:
                return conn.head_container(container)
            except ClientException as exc:
                if exc.http_status == 404:
                    return None
                raise

        return self._call(f"read container {container}", head)

    @staticmethod
    def _settings(headers: dict[str, str]) -> tuple[int, int, int] | None:
        """(format, size, object_size) from container headers, None if not a device."""
        low = {k.lower(): v for k, v in headers.items()}
        try:
            if META + "size" in low:
                return (
                    int(low.get(META + "format", FORMAT_VERSION)),
                    int(low[META + "size"]),
                    int(low[META + "object-size"]),
                )
            if LEGACY_META + "objects" in low:
                object_size = int(low.get(LEGACY_META + "object-size", LEGACY_OBJECT_SIZE))
                return 0, int(low[LEGACY_META + "objects"]) * object_size, object_size
        except (KeyError, ValueError):
            return None
        return None

    def _create_device(self, name: str, size: int, object_size: int) -> BlockDevice:
        container = self._container(name)
        headers = self._head(name)
        if headers is not None:
            if self._settings(headers) is not None:
                raise AlreadyExists(f"device {name} already exists")
            raise AlreadyExists(f"container {container} already exists and is not a stowkit device")
        meta = {
            META + "format": str(FORMAT_VERSION),
            META + "size": str(size),
            META + "object-size": str(object_size),
        }
        self._call(f"create container {container}", lambda conn: conn.put_container(container))
        token = secrets.token_hex(8)
        settings = {"format": FORMAT_VERSION, "size": size, "object_size": object_size,
                    "token": token}  # fmt: skip
        # Created, then trusted only once a rival's create would have landed
        # (the lock's rule, blocklock.settled_create).
        setup = blocklock.settled_create(
            self, name, SETTINGS_KEY, json.dumps(settings).encode(),
            lambda raw: _settings_token(raw) == token,
        )  # fmt: skip
        if setup.untrusted:
            # A rival setup whose create started after ours may have landed,
            # re-read its own token and gone on while ours was in flight; ours,
            # newer, replaced its settings object.  The container metadata,
            # which only a confirmed setup writes, is what a device's settings
            # are read from first, so without ours the rival's stand; this
            # setup just cannot say it won.
            raise Conflict(
                f"device {name}: its setup could not be confirmed: creating its settings "
                f"took {setup.seconds:.2f} s, longer than the settle time "
                f"({self.settle_seconds:g} s), so another setup may have made it meanwhile; "
                f"`stowkit blockstore show {name}` says what exists"
            )
        if not setup.created:
            raise AlreadyExists(f"device {name} already exists (another setup created it)")
        # The metadata serves listings (one HEAD per device); the settings
        # object stands in for it if this process dies before the POST.
        self._call(
            f"set the settings of container {container}",
            lambda conn: conn.post_container(container, headers=meta),
        )
        return BlockDevice(name, size, object_size, FORMAT_VERSION)

    def _settings_object(self, name: str) -> tuple[int, int, int] | None:
        """Settings from ``stowkit.device`` (a creation interrupted before its POST)."""
        raw = self._control_get(name, SETTINGS_KEY)
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
            return int(doc["format"]), int(doc["size"]), int(doc["object_size"])
        except (ValueError, KeyError, TypeError):
            return None

    def _device(self, name: str, headers: dict[str, str], details: bool) -> BlockDevice | None:
        settings = self._settings(headers) or self._settings_object(name)
        if settings is None:
            return None
        fmt, size, object_size = settings
        return BlockDevice(
            name,
            size,
            object_size,
            fmt,
            lock=blocklock.read_lock(self, name),
            objects_stored=sum(1 for _ in self.list_objects(name)) if details else None,
        )

    def _get_device(self, name: str, details: bool) -> BlockDevice:
        headers = self._head(name)
        if headers is None:
            raise NotFound(f"device {name} not found")
        device = self._device(name, headers, details)
        if device is None:
            raise NotFound(
                f"device {name} not found (container {self._container(name)} "
                "exists but is not a stowkit device)"
            )
        return device

    def list_devices(self, details: bool = False) -> Sequence[BlockDevice]:
        prefix = self.opts.container_prefix
        _, containers = self._call(
            "list containers",
            lambda conn: conn.get_account(prefix=prefix or None, full_listing=True),
        )
        candidates = []
        for entry in containers:
            name = entry["name"][len(prefix) :]
            try:
                candidates.append(names.check_name(name))
            except Exception:
                continue

        def one(name: str) -> BlockDevice | None:
            headers = self._head(name)
            return None if headers is None else self._device(name, headers, details)

        return [d for d in self._parallel(one, candidates) if d is not None]

    def _all_object_names(self, container: str) -> list[str]:
        def listing(conn: Any) -> list[str]:
            try:
                _, objs = conn.get_container(container, full_listing=True)
            except ClientException as exc:
                if exc.http_status == 404:
                    return []
                raise
            return [o["name"] for o in objs]

        return self._call(f"list container {container}", listing)

    def _destroy_device(self, name: str) -> None:
        container = self._container(name)
        for _attempt in range(5):
            # Data first, the lock last: a half-deleted device stays locked.
            objs = sorted(self._all_object_names(container), key=lambda n: n.startswith("stowkit"))
            self._parallel(lambda obj: self._delete(container, obj), objs)

            def drop(conn: Any) -> bool:
                try:
                    conn.delete_container(container)
                except ClientException as exc:
                    if exc.http_status == 404:
                        return True
                    if exc.http_status == 409:
                        return False  # listing lagged behind: some objects remain
                    raise
                return True

            if self._call(f"delete container {container}", drop):
                return
        raise Conflict(f"device {name}: container {container} is not empty after deleting")

    # -- objects -------------------------------------------------------------

    def _get(self, container: str, obj: str) -> bytes | None:
        def get(conn: Any) -> bytes | None:
            try:
                _, body = conn.get_object(container, obj)
            except ClientException as exc:
                if exc.http_status == 404:
                    return None
                raise
            return body

        return self._call(f"read {container}/{obj}", get)

    def _put(self, container: str, obj: str, data: bytes, headers: dict | None = None) -> bool:
        """PUT; False on 412 (If-None-Match failed); NotFound when the container is gone."""
        # Swift checks the ETag and refuses a body that arrived corrupted; the
        # MD5 costs about 3 ms per MiB here, which [blockstore_swift] send_etag
        # can save on trusted links.
        etag = hashlib.md5(data, usedforsecurity=False).hexdigest() if self.opts.send_etag else None
        body = data if isinstance(data, (Resendable, _Lent)) else Resendable(data)

        def put(conn: Any) -> bool:
            try:
                conn.put_object(
                    container,
                    obj,
                    body,
                    content_length=len(body),
                    etag=etag,
                    content_type="application/octet-stream",
                    headers=headers,
                )
            except ClientException as exc:
                if exc.http_status == 412:
                    return False
                if exc.http_status == 404:
                    raise NotFound(f"device container {container} not found") from None
                raise
            finally:
                _forget_request_body(conn)
            return True

        return self._call(f"write {container}/{obj}", put)

    def _delete(self, container: str, obj: str) -> None:
        def delete(conn: Any) -> None:
            try:
                conn.delete_object(container, obj)
            except ClientException as exc:
                if exc.http_status != 404:
                    raise

        self._call(f"delete {container}/{obj}", delete)

    def _read_object(self, device: str, index: int) -> bytes | None:
        return self._get(self._container(device), object_name(index))

    def _read_range(self, device: str, index: int, start: int, length: int) -> bytes | None:
        container, obj = self._container(device), object_name(index)

        def get(conn: Any) -> bytes | None:
            try:
                _, body = conn.get_object(
                    container, obj, headers={"Range": f"bytes={start}-{start + length - 1}"}
                )
            except ClientException as exc:
                if exc.http_status == 404:
                    return None
                if exc.http_status == 416:  # a short object ending before the range
                    return bytes(length)
                raise
            if len(body) > length:  # a proxy that ignored the Range header
                body = body[start : start + length]
            return body + bytes(length - len(body)) if len(body) < length else body

        return self._call(f"read {container}/{obj}", get)

    def upload_body(self, data: bytes | bytearray | memoryview) -> bytes:
        # The one copy of a snapshot; write_object then sends it as it is.  A
        # Resendable is immutable already (a retried upload): no copy at all.
        return data if isinstance(data, Resendable) else Resendable(data)

    def lend_body(self, data: bytearray) -> Any:
        return lent_body(data)

    def _write_object(self, device: str, index: int, data: bytes) -> None:
        # A Resendable (upload_body) is sent as is: 4 MiB less copied per object.
        self._put(self._container(device), object_name(index), data)

    def _delete_object(self, device: str, index: int) -> None:
        self._delete(self._container(device), object_name(index))

    def _list_objects(self, device: str) -> Iterator[int]:
        container = self._container(device)

        def listing(conn: Any) -> list[dict]:
            try:
                _, objs = conn.get_container(container, prefix=OBJECT_PREFIX, full_listing=True)
            except ClientException as exc:
                if exc.http_status == 404:
                    raise NotFound(f"device {device} not found") from None
                raise
            return objs

        objs = self._call(f"list container {container}", listing)
        indexes = (object_index(o["name"]) for o in objs)
        # Names are fixed-width, so Swift's listing order is index order already.
        return iter([i for i in indexes if i is not None])

    # -- control objects -----------------------------------------------------

    def _control_get(self, device: str, key: str) -> bytes | None:
        return self._get(self._container(device), key)

    def _control_create(self, device: str, key: str, data: bytes) -> bool:
        return self._put(self._container(device), key, data, {"If-None-Match": "*"})

    def _control_replace(self, device: str, key: str, data: bytes) -> None:
        self._put(self._container(device), key, data)

    def _control_delete(self, device: str, key: str) -> None:
        self._delete(self._container(device), key)
