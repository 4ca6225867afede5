"""One NBD connection's byte stream, read without copying payloads twice.

asyncio's StreamReader copies every byte three times on the way in (into its
buffer, out as a slice, into ``bytes``); for WRITE payloads that was a quarter
of the server's CPU.  This protocol reads headers through a small staging
buffer and lets the kernel write each payload straight into the bytearray the
request will hand to the cache (``BufferedProtocol.get_buffer``).

Flow control both ways: reading pauses while the staging buffer is full (the
client has pipelined ahead of what we serve), and :meth:`drain` waits while the
transport's write buffer is over its high-water mark.

After NBD_OPT_STARTTLS, :meth:`NbdStream.start_tls` puts asyncio's TLS layer
between the socket and this same protocol: it decrypts into the buffers
``get_buffer`` hands out, so payloads still land straight in their buffer.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

#: Staging for headers and option data; it also absorbs what a client sends
#: ahead, so it is big enough for a few pipelined requests.
STAGING = 256 << 10
WRITE_HIGH_WATER = 4 << 20
SMALL_REPLY = 16 << 10


class NbdStream(asyncio.BufferedProtocol):
    """Reader and writer of one connection; ``handler(stream)`` runs as its task."""

    def __init__(self, handler: Callable[[NbdStream], Awaitable[None]]) -> None:
        self._handler = handler
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task | None = None
        self._staging = bytearray(STAGING)
        self._start = 0  # unread staged bytes are _staging[_start:_end]
        self._end = 0
        self._target: memoryview | None = None  # the payload being filled directly
        self._filled = 0
        self._into_target = False  # what get_buffer handed out last: the payload or staging
        self._wanted = 0  # staged bytes the reader waits for
        self._waiter: asyncio.Future | None = None
        self._eof = False
        self._paused_reading = False
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future] = []
        self._lost: BaseException | None = None
        self._upgrading = False  # a TLS handshake is running on the transport

    # -- protocol callbacks ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # Replies of 256 KiB and more are common: a larger high-water mark
        # spares a drain wait per READ reply.
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.task = asyncio.get_running_loop().create_task(self._handler(self))

    def get_buffer(self, sizehint: int) -> memoryview:
        # A payload already complete (its reader not woken yet) must not be
        # handed out again as an empty buffer: asyncio's TLS layer takes a
        # zero-byte read for the peer's close_notify.  What follows it is staged.
        self._into_target = self._target is not None and self._filled < len(self._target)
        if self._into_target:
            return self._target[self._filled :]
        if self._start == self._end:
            self._start = self._end = 0
        elif self._end == len(self._staging):
            self._compact()
        return memoryview(self._staging)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._into_target:
            self._filled += nbytes
            if self._filled == len(self._target):
                self._wake()
            return
        self._end += nbytes
        if self._end - self._start >= self._wanted:
            self._wake()
        if self._end == len(self._staging) and self._start == 0:
            # Full of what the client sent ahead: stop reading until we catch up.
            self._paused_reading = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        # Keep our side open: requests read before the client's EOF still get
        # their replies; the connection's handler closes the stream at the end.
        # (Under TLS the EOF ends the session anyway; asyncio warns if asked.)
        return not self.tls

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._lost = exc or ConnectionResetError("connection closed")
        self._wake()
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_exception(self._lost)
        self._drain_waiters.clear()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()

    # -- reading -------------------------------------------------------------------------
    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _compact(self) -> None:
        staged = self._end - self._start
        self._staging[:staged] = self._staging[self._start : self._end]
        self._start, self._end = 0, staged

    def _take(self, n: int) -> bytes:
        data = bytes(self._staging[self._start : self._start + n])
        self._start += n
        if self._paused_reading:
            self._paused_reading = False
            self.transport.resume_reading()
        return data

    async def _wait(self) -> None:
        if self._eof:
            raise asyncio.IncompleteReadError(b"", None)
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def readexactly(self, n: int) -> bytes:
        """``n`` bytes (a header, option data); large ones go through :meth:`read_payload`."""
        if n > len(self._staging) // 2:
            return bytes(await self.read_payload(n))
        while self._end - self._start < n:
            if len(self._staging) - self._start < n:
                self._compact()
            self._wanted = n
            try:
                await self._wait()
            finally:
                self._wanted = 0
        return self._take(n)

    async def read_payload(self, n: int, into: bytearray | None = None) -> bytearray:
        """``n`` bytes in a bytearray (``into`` when given, of that size; else a new one),
        filled by the kernel where not staged already."""
        out = into if into is not None and len(into) == n else bytearray(n)
        staged = min(n, self._end - self._start)
        out[:staged] = self._staging[self._start : self._start + staged]
        self._start += staged
        if self._paused_reading:
            self._paused_reading = False
            self.transport.resume_reading()
        if staged < n:
            self._target = memoryview(out)
            self._filled = staged
            try:
                while self._filled < n:
                    await self._wait()
            finally:
                self._target = None
        return out

    def staged(self) -> int:
        """Bytes received and not read yet."""
        return self._end - self._start

    def hold_reading(self) -> None:
        """Leave what the client sends next in the socket (it is for the TLS layer)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    async def start_tls(self, context: ssl.SSLContext, timeout: float) -> None:
        """Upgrade to TLS, server side; from here on every byte goes through it.

        Call :meth:`hold_reading` before answering the client's STARTTLS: its
        ClientHello must reach the TLS layer, not the staging buffer.  The
        TLS layer feeds this same protocol, ``get_buffer`` included, so
        payloads are still decrypted straight into their buffer.  On failure
        (handshake refused, timed out, client gone) the connection is closed.
        """
        if self.staged():
            raise RuntimeError("bytes staged before the TLS upgrade")
        plain = self.transport
        assert plain is not None
        self._upgrading = True
        try:
            tls = await asyncio.get_running_loop().start_tls(
                plain, self, context, server_side=True, ssl_handshake_timeout=timeout
            )
        finally:
            self._upgrading = False
        self.transport = tls
        tls.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    @property
    def tls(self) -> bool:
        return self.get_extra_info("ssl_object") is not None

    def stop_reading(self) -> None:
        """Make the reader see end of file (server shutdown); requests read already go on."""
        if self._upgrading and self.transport is not None:
            # Paused, a TLS handshake would only end at the handshake timeout:
            # no request was read yet, so there is nothing to finish.
            self.transport.close()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self._eof = True
        self._wake()

    # -- writing -------------------------------------------------------------------------
    def writelines(self, parts: Iterable[bytes | memoryview]) -> None:
        parts = list(parts)
        if sum(map(len, parts)) <= SMALL_REPLY:
            self.transport.write(b"".join(parts))
        else:
            # Python 3.11's writelines joins the parts: a copy of every READ
            # reply.  Separate writes send the payload from where it lies.
            for part in parts:
                self.transport.write(part)

    async def drain(self) -> None:
        if self._lost is not None:
            raise ConnectionResetError("connection closed")
        if not self._write_paused:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(waiter)
        await waiter

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
