"""The asyncio NBD server: fixed newstyle handshake, options, transmission.

One task reads a connection's requests in order; each request then runs in a
task of its own, so a slow READ of a cold object does not hold up the ones
behind it (requests are pipelined and answered out of order, as the protocol
allows).  Replies are written whole under a per-connection lock.  Anything
a client sends that breaks the framing (wrong magic, truncation, a payload too
large to read) ends that one connection; it never reaches other clients.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
import signal
from collections.abc import Callable, Iterable

from stowkit.corelib.blocklock import DeviceLocked
from stowkit.corelib.blockstore import BlockStore, StorageDenied, StorageFull
from stowkit.corelib.errors import InvalidArgument, StowkitError
from stowkit.corelib.nbd import protocol as p
from stowkit.corelib.nbd.cache import BackendFailing, ObjectCache
from stowkit.corelib.nbd.export import Export, ExportSettings
from stowkit.corelib.nbd.stream import NbdStream
from stowkit.corelib.nbd.tls import ServerTls

LOG = logging.getLogger(__name__)

#: Requests of one connection being served at once; reading the next request
#: waits beyond that.  Their payload bytes are bounded too, over all the
#: connections to an export (its ``max_inflight_bytes``): 64 requests of
#: 32 MiB would be 2 GiB, and nbdcopy opens four connections.
MAX_IN_FLIGHT = 64
META_CONTEXT_ID = 1


class _Abort(Exception):
    """End this connection now (framing lost, client gone or asked to stop)."""


class _ByteBudget:
    """At most ``limit`` payload bytes held at once; acquiring waits for room."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.held = 0
        self.peak = 0
        self._room = asyncio.Event()

    async def acquire(self, n: int) -> int:
        n = min(n, self.limit)  # one request larger than the budget still goes alone
        while self.held + n > self.limit:
            self._room.clear()
            await self._room.wait()
        self.held += n
        self.peak = max(self.peak, self.held)
        return n

    def release(self, n: int) -> None:
        if n:
            self.held -= n
            self._room.set()


class RequestError(Exception):
    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno


class Connection:
    def __init__(self, server: NbdServer, stream: NbdStream) -> None:
        self.server = server
        self.stream = stream
        self.peer = stream.get_extra_info("peername")
        self.structured = False
        self.no_zeroes = False
        self.tls = False  # STARTTLS done: everything since went through TLS
        self.meta_export: str | None = None  # export the base:allocation context was set for
        self.export: Export | None = None
        self.cache: ObjectCache | None = None
        self._write_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._budget: _ByteBudget | None = None  # payload bytes in flight, once attached

    # -- io ---------------------------------------------------------------------
    async def _read(self, n: int) -> bytes:
        try:
            return await self.stream.readexactly(n)
        except (asyncio.IncompleteReadError, ConnectionError) as err:
            raise _Abort("client went away") from err

    async def _read_payload(self, n: int) -> bytearray:
        # An object-sized payload lands in a buffer the cache can keep as is.
        into = self.cache.payload_buffer(n) if self.cache is not None else None
        try:
            return await self.stream.read_payload(n, into)
        except (asyncio.IncompleteReadError, ConnectionError) as err:
            raise _Abort("client went away") from err

    async def _send(self, *parts: bytes) -> None:
        async with self._write_lock:
            self.stream.writelines(parts)
            await self.stream.drain()

    async def _opt_reply(self, option: int, reply_type: int, data: bytes = b"") -> None:
        await self._send(p.option_reply(option, reply_type, data))

    async def _opt_error(self, option: int, reply_type: int, message: str) -> None:
        await self._opt_reply(option, reply_type, message.encode()[:4096])

    # -- handshake --------------------------------------------------------------------
    async def handshake(self) -> bool:
        """Negotiate options; True when transmission starts."""
        await self._send(
            p.HANDSHAKE.pack(p.NBDMAGIC, p.IHAVEOPT, p.FLAG_FIXED_NEWSTYLE | p.FLAG_NO_ZEROES)
        )
        (client_flags,) = p.CLIENT_FLAGS.unpack(await self._read(4))
        if client_flags & ~(p.FLAG_C_FIXED_NEWSTYLE | p.FLAG_C_NO_ZEROES):
            raise _Abort(f"unknown client flags {client_flags:#x}")
        if not client_flags & p.FLAG_C_FIXED_NEWSTYLE:
            raise _Abort("client does not speak fixed newstyle")
        self.no_zeroes = bool(client_flags & p.FLAG_C_NO_ZEROES)
        while True:
            magic, option, length = p.OPTION_HEADER.unpack(await self._read(p.OPTION_HEADER.size))
            if magic != p.IHAVEOPT:
                raise _Abort(f"bad option magic {magic:#x}")
            if length > p.MAX_OPTION_LENGTH:
                # Reading it would let one client make us buffer gigabytes.
                raise _Abort(f"option {option} of {length} bytes")
            data = await self._read(length)
            if await self._option(option, data):
                return True

    async def _option(self, option: int, data: bytes) -> bool:
        if option == p.OPT_STARTTLS:
            await self._starttls(data)
            return False
        if not self.tls and self.server.tls is not None and self.server.tls.required:
            # TLS mode "require": nothing is said about exports in clear.
            if option == p.OPT_EXPORT_NAME:
                raise _Abort("NBD_OPT_EXPORT_NAME before TLS")  # it has no error reply
            if option != p.OPT_ABORT:
                await self._opt_error(option, p.REP_ERR_TLS_REQD, "this server requires TLS")
                return False
        if option == p.OPT_EXPORT_NAME:
            export = self.server.find_export(data.decode("utf-8", "replace"))
            if export is None:
                raise _Abort("unknown export")  # the protocol allows nothing else here
            try:
                await self._attach(export)
            except DeviceLocked as err:
                raise _Abort(str(err)) from err
            reply = p.EXPORT_NAME_REPLY.pack(export.size, export.transmission_flags)
            await self._send(reply if self.no_zeroes else reply + bytes(124))
            return True
        if option == p.OPT_ABORT:
            try:
                await self._opt_reply(option, p.REP_ACK)
            except ConnectionError:
                pass
            raise _Abort("client aborted")
        if option == p.OPT_LIST:
            if data:
                await self._opt_error(option, p.REP_ERR_INVALID, "LIST takes no data")
                return False
            for export in self.server.exports.values():
                name = export.name.encode()
                await self._opt_reply(option, p.REP_SERVER, p.U32.pack(len(name)) + name)
            await self._opt_reply(option, p.REP_ACK)
            return False
        if option == p.OPT_STRUCTURED_REPLY:
            if data:
                await self._opt_error(option, p.REP_ERR_INVALID, "STRUCTURED_REPLY takes no data")
                return False
            self.structured = True
            await self._opt_reply(option, p.REP_ACK)
            return False
        if option in (p.OPT_INFO, p.OPT_GO):
            return await self._info_go(option, data)
        if option in (p.OPT_LIST_META_CONTEXT, p.OPT_SET_META_CONTEXT):
            await self._meta_context(option, data)
            return False
        await self._opt_error(option, p.REP_ERR_UNSUP, f"option {option} is not supported")
        return False

    async def _starttls(self, data: bytes) -> None:
        option = p.OPT_STARTTLS
        tls = self.server.tls
        if data:
            await self._opt_error(option, p.REP_ERR_INVALID, "STARTTLS takes no data")
            return
        if self.tls:
            await self._opt_error(option, p.REP_ERR_INVALID, "TLS is already negotiated")
            return
        if tls is None:
            await self._opt_error(option, p.REP_ERR_POLICY, "TLS is not enabled on this server")
            return
        if self.stream.staged():
            # Bytes sent behind STARTTLS, before its reply, came in clear: a
            # man in the middle could have put them there (as SMTP's STARTTLS
            # command injection).  The protocol forbids them.
            raise _Abort("data sent after NBD_OPT_STARTTLS, before its reply")
        self.stream.hold_reading()  # the ClientHello is for the TLS layer
        await self._opt_reply(option, p.REP_ACK)
        try:
            await self.stream.start_tls(tls.context, self.server.handshake_timeout)
        except (OSError, EOFError) as err:  # ssl.SSLError, reset, handshake timeout
            LOG.info("closing %s: TLS handshake failed: %s", self.peer, str(err) or repr(err))
            raise _Abort("TLS handshake failed") from err
        self.tls = True
        # Nothing negotiated in clear carries over into TLS (it was not protected).
        self.structured = False
        self.meta_export = None
        LOG.debug("%s: TLS (%s) %s", self.peer, tls.kind, self.stream.get_extra_info("cipher"))

    async def _info_go(self, option: int, data: bytes) -> bool:
        try:
            name, rest = _take_string(data)
            (count,) = p.U16.unpack_from(rest)
            if len(rest) != 2 + 2 * count:
                raise ValueError
            requests = {p.U16.unpack_from(rest, 2 + 2 * i)[0] for i in range(count)}
        except Exception:
            await self._opt_error(option, p.REP_ERR_INVALID, "malformed INFO/GO request")
            return False
        export = self.server.find_export(name)
        if export is None:
            await self._opt_error(option, p.REP_ERR_UNKNOWN, f"no export named {name!r}")
            return False
        if option == p.OPT_GO:
            try:
                await self._attach(export)
            except DeviceLocked as err:
                await self._opt_error(option, p.REP_ERR_POLICY, str(err))
                return False
            except StowkitError as err:
                await self._opt_error(option, p.REP_ERR_SHUTDOWN, str(err))
                return False
        infos = [p.INFO_EXPORT_STRUCT.pack(p.INFO_EXPORT, export.size, export.transmission_flags)]
        infos.append(p.INFO_BLOCK_SIZE_STRUCT.pack(p.INFO_BLOCK_SIZE, *export.block_sizes))
        if p.INFO_NAME in requests:
            infos.append(p.U16.pack(p.INFO_NAME) + export.name.encode())
        if p.INFO_DESCRIPTION in requests:
            infos.append(p.U16.pack(p.INFO_DESCRIPTION) + export.description.encode())
        for info in infos:
            await self._opt_reply(option, p.REP_INFO, info)
        await self._opt_reply(option, p.REP_ACK)
        if option == p.OPT_GO:
            if self.meta_export is not None and self.meta_export != export.name:
                self.meta_export = None  # contexts were set for another export
            return True
        return False

    async def _meta_context(self, option: int, data: bytes) -> None:
        if option == p.OPT_SET_META_CONTEXT and not self.structured:
            await self._opt_error(option, p.REP_ERR_INVALID, "negotiate structured replies first")
            return
        try:
            name, rest = _take_string(data)
            (count,) = p.U32.unpack_from(rest)
            rest = rest[4:]
            queries = []
            for _ in range(count):
                query, rest = _take_string(rest)
                queries.append(query)
            if rest:
                raise ValueError
        except Exception:
            await self._opt_error(option, p.REP_ERR_INVALID, "malformed meta context request")
            return
        export = self.server.find_export(name)
        if export is None:
            await self._opt_error(option, p.REP_ERR_UNKNOWN, f"no export named {name!r}")
            return
        if option == p.OPT_LIST_META_CONTEXT:
            wanted = not queries or any(q in ("base:", p.BASE_ALLOCATION) for q in queries)
        else:
            wanted = p.BASE_ALLOCATION in queries
            self.meta_export = export.name if wanted else None
        if wanted:
            body = p.U32.pack(META_CONTEXT_ID) + p.BASE_ALLOCATION.encode()
            await self._opt_reply(option, p.REP_META_CONTEXT, body)
        await self._opt_reply(option, p.REP_ACK)

    async def _attach(self, export: Export) -> None:
        self.cache = await export.attach()
        self.export = export

    # -- transmission -------------------------------------------------------------------
    async def transmission(self) -> None:
        assert self.export is not None
        self._budget = self.server.budget(self.export)
        while True:
            await self._slots.acquire()
            try:
                header = await self._read(p.REQUEST.size)
            except _Abort:
                self._slots.release()
                raise
            magic, flags, cmd, cookie, offset, length = p.REQUEST.unpack(header)
            if magic != p.REQUEST_MAGIC:
                self._slots.release()
                raise _Abort(f"bad request magic {magic:#x}")
            payload: bytes | bytearray = b""
            held = 0
            if cmd == p.CMD_WRITE:
                if length > p.MAX_PAYLOAD:
                    self._slots.release()
                    raise _Abort(f"write of {length} bytes")  # too big to read: hang up
                # Not reading the payload until there is room leaves it in the
                # socket: the client's sends block (TCP backpressure).
                held = await self._budget.acquire(length)
                try:
                    payload = await self._read_payload(length)
                except _Abort:
                    self._budget.release(held)
                    self._slots.release()
                    raise
            elif cmd == p.CMD_READ and length <= p.MAX_PAYLOAD:
                held = await self._budget.acquire(length)  # the reply's bytes
            if cmd == p.CMD_DISC:
                self._slots.release()
                return
            task = asyncio.ensure_future(self._serve(flags, cmd, cookie, offset, length, payload))
            self._tasks.add(task)
            task.add_done_callback(lambda t, held=held: self._done(t, held))

    def _done(self, task: asyncio.Task, held: int = 0) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if self._budget is not None:
            self._budget.release(held)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if not isinstance(exc, (_Abort, ConnectionError)):
                LOG.error("request failed on %s: %r", self.peer, exc)

    async def drain_requests(self) -> None:
        """Let running requests finish, for at most the export's ``shutdown_timeout``
        (or until the stopping server's deadline, when sooner)."""
        timeout = self.export.settings.shutdown_timeout if self.export is not None else None
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        stop_deadline = self.export.stop_deadline if self.export is not None else None
        if stop_deadline is not None and deadline is not None:
            deadline = min(deadline, stop_deadline)
        while self._tasks:
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                LOG.error(
                    "%s: %d requests still running after %g s; giving up on them",
                    self.peer,
                    len(self._tasks),
                    timeout,
                )
                for task in list(self._tasks):
                    task.cancel()
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
                return
            await asyncio.wait(list(self._tasks), timeout=left)

    async def _serve(
        self,
        flags: int,
        cmd: int,
        cookie: int,
        offset: int,
        length: int,
        payload: bytes | bytearray,
    ) -> None:
        try:
            data = await self._execute(flags, cmd, offset, length, payload)
        except RequestError as err:
            await self._error(cookie, err.errno, str(err))
            return
        except Exception as err:
            LOG.error("%s on %s: %s", p.COMMAND_NAMES.get(cmd, cmd), self.export.name, err)
            await self._error(cookie, nbd_errno(err), f"backend error: {err}")
            return
        if cmd == p.CMD_READ:
            if self.structured:
                chunk = p.U64.pack(offset)
                header = p.STRUCTURED_REPLY.pack(
                    p.STRUCTURED_REPLY_MAGIC,
                    p.REPLY_FLAG_DONE,
                    p.REPLY_TYPE_OFFSET_DATA,
                    cookie,
                    len(chunk) + len(data),
                )
                await self._send(header, chunk, data)
            else:
                await self._send(p.simple_reply(cookie), data)
        elif cmd == p.CMD_BLOCK_STATUS:
            body = [p.U32.pack(META_CONTEXT_ID)]
            body += [p.U32.pack(n) + p.U32.pack(s) for n, s in data]
            await self._send(p.structured_reply(cookie, p.REPLY_TYPE_BLOCK_STATUS, b"".join(body)))
        elif self.structured:
            await self._send(p.structured_reply(cookie, p.REPLY_TYPE_NONE))
        else:
            await self._send(p.simple_reply(cookie))

    async def _error(self, cookie: int, errno: int, message: str) -> None:
        if self.structured:
            await self._send(p.structured_error(cookie, errno, message))
        else:
            await self._send(p.simple_reply(cookie, errno))

    async def _execute(
        self, flags: int, cmd: int, offset: int, length: int, payload: bytes | bytearray
    ):
        export, cache = self.export, self.cache
        assert export is not None and cache is not None
        allowed = _ALLOWED_FLAGS.get(cmd)
        if allowed is None:
            raise RequestError(p.EINVAL, f"unknown command {cmd}")
        if flags & ~allowed:
            raise RequestError(p.EINVAL, f"flags {flags:#x} not valid for command {cmd}")
        end = offset + length
        fua = bool(flags & p.CMD_FLAG_FUA)
        if cmd == p.CMD_READ:
            if end > export.size:
                raise RequestError(p.EINVAL, "read past the end of the export")
            if length > p.MAX_PAYLOAD:
                raise RequestError(p.EINVAL, f"read of {length} bytes is over the maximum")
            return await cache.read(offset, length)
        if cmd == p.CMD_FLUSH:
            await cache.flush()
            return None
        if cmd == p.CMD_BLOCK_STATUS:
            if self.meta_export != export.name:
                raise RequestError(p.EINVAL, "no metadata context was negotiated")
            if length == 0 or end > export.size:
                raise RequestError(p.EINVAL, "block status range outside the export")
            extents = cache.extents(offset, length)
            return extents[:1] if flags & p.CMD_FLAG_REQ_ONE else extents
        # WRITE, TRIM, WRITE_ZEROES change data
        if export.read_only:
            raise RequestError(p.EPERM, "the export is read-only")
        if export.lost_lock:
            raise RequestError(p.EIO, f"the device lock was lost: {export.lost_lock}")
        if end > export.size:
            errno = p.EINVAL if cmd == p.CMD_TRIM else p.ENOSPC
            raise RequestError(errno, "request goes past the end of the export")
        if cmd == p.CMD_WRITE:
            # The payload is this request's alone: the cache may keep it.
            await cache.write(offset, payload, fua=fua, given=True)
        elif cmd == p.CMD_TRIM:
            await cache.zero(offset, length, punch=True, fua=fua)
        else:
            punch = not flags & p.CMD_FLAG_NO_HOLE
            await cache.zero(offset, length, punch=punch, fua=fua)
        return None


_ALLOWED_FLAGS = {
    p.CMD_READ: p.CMD_FLAG_FUA,
    p.CMD_WRITE: p.CMD_FLAG_FUA,
    p.CMD_FLUSH: p.CMD_FLAG_FUA,
    p.CMD_TRIM: p.CMD_FLAG_FUA,
    p.CMD_WRITE_ZEROES: p.CMD_FLAG_FUA | p.CMD_FLAG_NO_HOLE,
    p.CMD_BLOCK_STATUS: p.CMD_FLAG_FUA | p.CMD_FLAG_REQ_ONE,
}


def nbd_errno(err: BaseException) -> int:
    """The NBD error (ENOSPC, EPERM, EINVAL or EIO) for what really went wrong.

    A lost lease is EIO (the data's fate is unknown to the client); a spent
    retry budget takes the error of the failure behind it.
    """
    seen = 0
    while isinstance(err, BackendFailing) and err.__cause__ is not None and seen < 8:
        err, seen = err.__cause__, seen + 1
    if isinstance(err, RequestError):
        return err.errno
    if isinstance(err, DeviceLocked):
        return p.EIO
    if isinstance(err, StorageFull):
        return p.ENOSPC
    if isinstance(err, StorageDenied):
        return p.EPERM
    if isinstance(err, InvalidArgument):
        return p.EINVAL
    if isinstance(err, OSError) and err.errno is not None:
        return _OS_ERRNOS.get(err.errno, p.EIO)
    return p.EIO


_OS_ERRNOS = {
    errno.ENOSPC: p.ENOSPC,
    errno.EDQUOT: p.ENOSPC,
    errno.EFBIG: p.ENOSPC,
    errno.EPERM: p.EPERM,
    errno.EACCES: p.EPERM,
    errno.EROFS: p.EPERM,
    errno.EINVAL: p.EINVAL,
}


def _take_string(data: bytes) -> tuple[str, bytes]:
    """A u32-length-prefixed UTF-8 string from the front of ``data``, and the rest."""
    (n,) = p.U32.unpack_from(data)
    if n > 4096 or len(data) < 4 + n:
        raise ValueError("bad string length")
    return data[4 : 4 + n].decode("utf-8"), data[4 + n :]


class NbdServer:
    """Serve ``exports`` (name -> Export) on ``bind:port``, with ``tls`` offered or required."""

    def __init__(
        self,
        exports: Iterable[Export],
        bind: str = "127.0.0.1",
        port: int = 10809,
        handshake_timeout: float = 30.0,
        tls: ServerTls | None = None,
    ):
        self.exports = {e.name: e for e in exports}
        #: None: TLS off (STARTTLS refused); otherwise offered or required
        self.tls = tls
        self.bind = bind
        self.port = port
        #: a client stuck before transmission (silent, or trickling options) is
        #: closed after this long: idle handshakes must not pile up for ever
        self.handshake_timeout = handshake_timeout
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[Connection] = set()
        self._handlers: set[asyncio.Task] = set()
        self._budgets: dict[str, _ByteBudget] = {}

    def budget(self, export: Export) -> _ByteBudget:
        """The payload bytes in flight on every connection to ``export``: one bound
        for them all, so a multi-connection client holds no more than one would."""
        budget = self._budgets.get(export.name)
        if budget is None:
            budget = self._budgets[export.name] = _ByteBudget(export.settings.max_inflight_bytes)
        return budget

    def find_export(self, name: str) -> Export | None:
        if name == "" and len(self.exports) == 1:
            return next(iter(self.exports.values()))  # the default export
        return self.exports.get(name)

    async def start(self) -> None:
        """Take the locks held for the server's life (lock_scope ``server``), then listen.

        All at once: each lock's confirmation waits the backend's settle time.
        A device locked by someone else (DeviceLocked) or a lock race lost
        (LeaseLost) is raised before the port is open; locks already taken
        are given back first.
        """
        exports = list(self.exports.values())
        results = await asyncio.gather(*(e.open() for e in exports), return_exceptions=True)
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            for export, result in zip(exports, results, strict=True):
                if result is None:
                    try:
                        await export.close()
                    except Exception as err:
                        LOG.error("export %s: %s", export.name, err)
            raise failure
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: NbdStream(self._handle), self.bind, self.port, reuse_address=True
        )
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]

    async def _handle(self, stream: NbdStream) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        conn = Connection(self, stream)
        self._connections.add(conn)
        try:
            if await asyncio.wait_for(conn.handshake(), self.handshake_timeout):
                await conn.transmission()
        except _Abort as err:
            LOG.debug("closing %s: %s", conn.peer, err)
        except TimeoutError:
            LOG.info("closing %s: no export chosen within %g s", conn.peer, self.handshake_timeout)
        except asyncio.CancelledError:
            pass
        except Exception:
            LOG.exception("connection %s failed", conn.peer)
        finally:
            try:
                await conn.drain_requests()
            finally:
                # Every reply is out: the client must not wait for the write-back
                # and unlock of a last disconnect (they may take up to
                # shutdown_timeout on a failing backend and tell it nothing).
                stream.close()
                self._connections.discard(conn)
                if conn.export is not None:
                    try:
                        await conn.export.detach()
                    except Exception as err:
                        LOG.error(
                            "export %s: write-back on disconnect failed: %s", conn.export.name, err
                        )
                if task is not None:
                    self._handlers.discard(task)

    async def serve_until(self, stop: asyncio.Event) -> None:
        await self.start()
        await stop.wait()
        await self.shutdown()

    async def shutdown(self, timeout: float | None = None) -> None:
        """Stop accepting, let running requests finish, write back and unlock.

        All of it within ``timeout`` seconds (default: the exports' largest
        ``shutdown_timeout``), plus a second or two to unlock and to record
        what could not be stored: draining, write-back and unlocking share
        one deadline instead of each taking the whole timeout in turn.
        """
        if timeout is None:
            timeout = max((e.settings.shutdown_timeout for e in self.exports.values()), default=0)
        deadline = asyncio.get_running_loop().time() + timeout
        for export in self.exports.values():
            export.stop_deadline = deadline
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            # The read loop sees end of file; requests already read complete.
            conn.stream.stop_reading()
        if self._handlers:
            loop = asyncio.get_running_loop()
            # Draining and write-back keep to the deadline by themselves (and
            # take a second or two more to unlock and to record what was not
            # stored); a connection still in its handshake may be waiting on a
            # hung backend (taking the lock) with no bound of its own but the
            # handshake timeout: it is cancelled.
            busy = list(self._handlers)
            _, stuck = await asyncio.wait(busy, timeout=max(0.0, deadline - loop.time()) + 3)
            if stuck:
                LOG.error(
                    "stopping: %d connections still busy %g s after the stop; closing them",
                    len(stuck),
                    timeout,
                )
                for task in stuck:
                    task.cancel()
                await asyncio.wait(stuck, timeout=1)
        # Exports holding their lock for the server: write back and unlock now.
        for export in self.exports.values():
            try:
                await export.close()
            except Exception as err:
                LOG.error("export %s: write-back at the stop failed: %s", export.name, err)
        if self._server is not None:
            await self._server.wait_closed()


def serve(
    store: BlockStore,
    names: Iterable[str],
    bind: str = "127.0.0.1",
    port: int = 10809,
    read_only: bool = False,
    settings: ExportSettings | None = None,
    ready: Callable[[NbdServer], None] | None = None,
    stopping: Callable[[], None] | None = None,
    tls: ServerTls | None = None,
) -> None:
    """Serve devices of one store until SIGTERM or SIGINT, then write everything back."""
    entries = [(store, name, read_only) for name in names]
    serve_many(entries, bind, port, settings, ready, stopping, tls=tls)


def serve_many(
    entries: Iterable[tuple[BlockStore, str, bool]],
    bind: str = "127.0.0.1",
    port: int = 10809,
    settings: ExportSettings | None = None,
    ready: Callable[[NbdServer], None] | None = None,
    stopping: Callable[[], None] | None = None,
    tls: ServerTls | None = None,
) -> None:
    """Serve (store, device name, read-only) entries; each device may have its own store.

    ``ready(server)`` runs once the port accepts connections; ``stopping()`` as
    soon as the stop signal arrives, before the write-back.  ``tls`` (loaded
    credentials, see :mod:`stowkit.corelib.nbd.tls`) offers or requires STARTTLS.
    """
    from stowkit.corelib.nbd.workers import DaemonExecutor

    settings = settings or ExportSettings()
    # Daemon threads: a backend call hung past the shutdown bound must not keep
    # the process alive at exit (ThreadPoolExecutor joins its threads then).
    executor: concurrent.futures.Executor = DaemonExecutor(settings.workers + 4, "nbd-io")
    exports = [
        Export(store, store.get_device(name), read_only, settings, executor)
        for store, name, read_only in entries
    ]

    async def main() -> None:
        server = NbdServer(exports, bind, port, settings.handshake_timeout, tls=tls)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await server.start()
        if ready is not None:
            ready(server)
        await stop.wait()
        if stopping is not None:
            stopping()
        LOG.info("stopping: writing back dirty data")
        bound = settings.shutdown_timeout
        try:
            # shutdown() keeps to the bound by itself; this is the backstop.
            await asyncio.wait_for(server.shutdown(bound), bound + 5)
        except TimeoutError:
            LOG.error("stopping: not done %g s after the stop signal; exiting anyway", bound + 5)

    from stowkit.corelib.nbd import memory, profiling

    memory.return_big_buffers()
    profiling.start()  # STOWKIT_NBD_PROFILE=FILE only
    try:
        asyncio.run(main())
    finally:
        profiling.stop()
        # Calls still running are given up on (what they were storing was
        # reported as not stored); their daemon threads end with the process.
        executor.shutdown(wait=False, cancel_futures=True)
