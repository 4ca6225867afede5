"""An in-memory BlockStore and a tiny raw NBD client for the NBD unit tests."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

from oslo_config import cfg

from stowkit.corelib import blocklock
from stowkit.corelib.blockstore import BlockDevice, BlockStore
from stowkit.corelib.errors import AlreadyExists, NotFound
from stowkit.corelib.nbd import protocol as p


def intercept_lock(monkeypatch, store: BlockStore, name: str, hook: Callable[..., Any]) -> None:
    """Route ``blocklock.<name>(store, ...)`` through ``hook(original, store, ...)``.

    For ``store`` only: calls for any other store go straight through.  The
    lock protocol is functions over the store, not store methods, so a test
    injects a race (what a rival does between two steps) there.  Undone with
    ``monkeypatch``.
    """
    original = getattr(blocklock, name)

    def routed(target, *args, **kwargs):
        if target is store:
            return hook(original, target, *args, **kwargs)
        return original(target, *args, **kwargs)

    monkeypatch.setattr(blocklock, name, routed)


class MemoryBlockStore(BlockStore):
    capabilities = frozenset()  # no RANGED_READ: the tests choose ranged reads themselves

    def __init__(self) -> None:
        super().__init__(cfg.ConfigOpts(), "blockstore_memory")
        self.devices: dict[str, BlockDevice] = {}
        self.objects: dict[str, dict[int, bytes]] = {}
        self.control: dict[str, dict[str, bytes]] = {}
        self.guard = threading.Lock()
        self.writes: list[tuple[str, int]] = []
        self.deletes: list[tuple[str, int]] = []
        self.reads: list[tuple[str, int]] = []
        self.ranges: list[tuple[str, int, int, int]] = []
        self.fail_writes: bool | BaseException = False  # an exception: raised as it is
        self.fail_reads: set[int] = set()  # indexes whose read_object raises
        self.write_gate: threading.Event | None = None  # when set: writes wait for it

    def create_device(self, name, size, object_size=65536):
        return super().create_device(name, size, object_size)  # a smaller default object

    def _create_device(self, name, size, object_size):
        if name in self.devices:
            raise AlreadyExists(name)
        self.devices[name] = BlockDevice(name, size, object_size)
        self.objects[name] = {}
        self.control[name] = {}
        return self.devices[name]

    def _get_device(self, name, details):
        try:
            return self.devices[name]
        except KeyError:
            raise NotFound(f"no device {name}") from None

    def list_devices(self, details=False):
        return sorted(self.devices.values(), key=lambda d: d.name)

    def _destroy_device(self, name):
        del self.devices[name], self.objects[name], self.control[name]

    def _read_object(self, device, index):
        if index in self.fail_reads:
            raise OSError(f"cannot read object {index}")
        with self.guard:
            self.reads.append((device, index))
            return self.objects[device].get(index)

    def _read_range(self, device, index, start, length):
        with self.guard:
            self.ranges.append((device, index, start, length))
            data = self.objects[device].get(index)
        return None if data is None else data[start : start + length]

    def _write_object(self, device, index, data):
        if self.write_gate is not None:
            self.write_gate.wait(10)
        if isinstance(self.fail_writes, BaseException):
            raise self.fail_writes
        if self.fail_writes:
            raise OSError("backend down")
        assert len(data) == self.devices[device].object_size
        with self.guard:
            self.writes.append((device, index))
            self.objects[device][index] = bytes(data)

    def _delete_object(self, device, index):
        with self.guard:
            self.deletes.append((device, index))
            self.objects[device].pop(index, None)

    def _list_objects(self, device):
        return iter(sorted(self.objects[device]))

    def _control_get(self, device, key):
        return self.control[device].get(key)

    def _control_create(self, device, key, data):
        with self.guard:
            if key in self.control[device]:
                return False
            self.control[device][key] = data
            return True

    def _control_replace(self, device, key, data):
        self.control[device][key] = data

    def _control_delete(self, device, key):
        self.control[device].pop(key, None)

    def content(self, device: str) -> bytes:
        dev = self.devices[device]
        zero = bytes(dev.object_size)
        return b"".join(self.objects[device].get(i, zero) for i in range(dev.object_count))


class RawClient:
    """Speaks just enough NBD to test the server, including breaking the rules."""

    def __init__(self, port: int, timeout: float = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.structured = False

    def recv(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk
        return buf

    def closed(self) -> bool:
        """True when the server hung up (reads EOF)."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionError:
            return True

    def greet(self, flags: int = p.FLAG_C_FIXED_NEWSTYLE | p.FLAG_C_NO_ZEROES) -> int:
        magic, opt, hflags = p.HANDSHAKE.unpack(self.recv(18))
        assert (magic, opt) == (p.NBDMAGIC, p.IHAVEOPT)
        self.sock.sendall(p.U32.pack(flags))
        return hflags

    def option(self, option: int, data: bytes = b"") -> None:
        self.sock.sendall(p.OPTION_HEADER.pack(p.IHAVEOPT, option, len(data)) + data)

    def option_reply(self) -> tuple[int, int, bytes]:
        magic, option, rtype, length = p.OPTION_REPLY.unpack(self.recv(20))
        assert magic == p.REPLY_MAGIC
        return option, rtype, self.recv(length)

    def replies_until_final(self) -> list[tuple[int, bytes]]:
        out = []
        while True:
            _, rtype, data = self.option_reply()
            out.append((rtype, data))
            if rtype not in (p.REP_SERVER, p.REP_INFO, p.REP_META_CONTEXT):
                return out

    def go(self, name: str, structured: bool = True, meta: bool = False) -> tuple[int, int]:
        if structured:
            self.option(p.OPT_STRUCTURED_REPLY)
            assert self.option_reply()[1] == p.REP_ACK
            self.structured = True
        if meta:
            body = _string(name) + p.U32.pack(1) + _string(p.BASE_ALLOCATION)
            self.option(p.OPT_SET_META_CONTEXT, body)
            replies = self.replies_until_final()
            assert replies[-1][0] == p.REP_ACK, replies
        self.option(p.OPT_GO, _string(name) + p.U16.pack(0))
        replies = self.replies_until_final()
        assert replies[-1][0] == p.REP_ACK, replies
        for rtype, data in replies:
            if rtype == p.REP_INFO and p.U16.unpack_from(data)[0] == p.INFO_EXPORT:
                _, size, flags = p.INFO_EXPORT_STRUCT.unpack(data)
                return size, flags
        raise AssertionError("no NBD_INFO_EXPORT")

    def request(self, cmd: int, offset: int = 0, length: int = 0, flags: int = 0,
                data: bytes = b"", cookie: int = 1) -> None:  # fmt: skip
        header = p.REQUEST.pack(p.REQUEST_MAGIC, flags, cmd, cookie, offset, length)
        self.sock.sendall(header + data)

    def reply(self, read_length: int = 0) -> tuple[int, int, bytes, list]:
        """(cookie, error, data, chunks) of one whole reply."""
        magic = struct.unpack(">I", self.recv(4))[0]
        if magic == p.SIMPLE_REPLY_MAGIC:
            error, cookie = struct.unpack(">IQ", self.recv(12))
            data = self.recv(read_length) if not error and read_length else b""
            return cookie, error, data, []
        assert magic == p.STRUCTURED_REPLY_MAGIC, hex(magic)
        chunks, data, error = [], b"", 0
        while True:
            flags, rtype, cookie, length = struct.unpack(">HHQI", self.recv(16))
            payload = self.recv(length)
            chunks.append((rtype, payload))
            if rtype == p.REPLY_TYPE_OFFSET_DATA:
                data += payload[8:]
            elif rtype == p.REPLY_TYPE_ERROR:
                error = p.U32.unpack_from(payload)[0]
            if flags & p.REPLY_FLAG_DONE:
                return cookie, error, data, chunks
            assert struct.unpack(">I", self.recv(4))[0] == p.STRUCTURED_REPLY_MAGIC

    def close(self) -> None:
        self.sock.close()


def _string(text: str) -> bytes:
    raw = text.encode()
    return p.U32.pack(len(raw)) + raw


class ServerThread:
    """An NbdServer on its own event loop in a thread, on a free port."""

    def __init__(self, store: BlockStore, names: list[str], read_only: bool = False,
                 **settings) -> None:  # fmt: skip
        import asyncio
        import concurrent.futures

        from stowkit.corelib.nbd.export import Export, ExportSettings
        from stowkit.corelib.nbd.server import NbdServer

        self.settings = ExportSettings(**settings)
        self.executor = concurrent.futures.ThreadPoolExecutor(8)
        self.loop = asyncio.new_event_loop()
        exports = [
            Export(store, store.get_device(n), read_only, self.settings, self.executor)
            for n in names
        ]
        self.server = NbdServer(exports, "127.0.0.1", 0, self.settings.handshake_timeout)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self.server.start())
        self.port = self.server.port

    def call(self, coro):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def stop(self) -> None:
        self.call(self.server.shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.executor.shutdown()
