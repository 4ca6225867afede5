"""Stopping on a hung or failing backend (what tests/functional/test_nbd_faults.py found):
exit is not held by hung worker threads, nor shutdown by a handshake waiting for the
lock; a client is let go before the last write-back; a lock left behind by a failed
release does not lock the server out; what was not stored is recorded."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

from oslo_config import cfg

from stowkit.corelib import blocklock, config
from stowkit.corelib.blockunstored import UNSTORED_KEY, unstored_records
from stowkit.corelib.errors import BackendUnavailable
from stowkit.corelib.nbd import protocol as p
from stowkit.corelib.nbd.workers import DaemonExecutor
from tests.fakes.nbd import MemoryBlockStore, RawClient, ServerThread, _string

OSIZE = 4096
SIZE = 64 * OSIZE


def eventually(check, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def client(server, name: str = "one") -> RawClient:
    c = RawClient(server.port, timeout=10)
    c.greet()
    c.go(name)
    return c


def test_a_hung_call_in_a_daemon_executor_does_not_hold_the_process_at_exit():
    script = textwrap.dedent(
        """
        import sys, threading, time
        from stowkit.corelib.nbd.workers import DaemonExecutor
        pool = DaemonExecutor(2, "t")
        started = threading.Event()
        pool.submit(lambda: (started.set(), time.sleep(120)))
        assert pool.submit(lambda: 6 * 7).result(10) == 42  # the other thread works
        started.wait(10)
        pool.shutdown(wait=False, cancel_futures=True)
        print("exiting", flush=True)
        """
    )
    # A ThreadPoolExecutor would hold this process for the 120 s call.
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout == "exiting\n", done.stderr


def test_daemon_executor_runs_calls_and_reports_errors():
    pool = DaemonExecutor(3, "t")
    futures = [pool.submit(lambda i=i: i * i) for i in range(20)]
    assert [f.result(10) for f in futures] == [i * i for i in range(20)]
    failing = pool.submit(lambda: 1 / 0)
    assert isinstance(failing.exception(10), ZeroDivisionError)
    assert len(pool._threads) <= 3
    pool.shutdown()
    try:
        pool.submit(lambda: None)
    except RuntimeError:
        pass
    else:
        raise AssertionError("submit after shutdown")


class HangingLockStore(MemoryBlockStore):
    """Taking the lock hangs (until ``release`` is set): a Swift that never answers."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Event()

    def _control_create(self, device, key, data):
        self.entered.set()
        self.release.wait(60)
        return super()._control_create(device, key, data)


def test_a_handshake_waiting_for_a_hung_backend_does_not_hold_the_shutdown():
    store = HangingLockStore()
    store.create_device("one", SIZE, OSIZE)
    t = ServerThread(
        store, ["one"], shutdown_timeout=0.5, handshake_timeout=60, lock_scope="connection"
    )
    c = RawClient(t.port, timeout=30)
    c.greet()
    c.option(p.OPT_GO, _string("one") + p.U16.pack(0))  # attach: takes the lock, hangs
    try:
        assert store.entered.wait(10)
        # Within ServerThread.call's 30 s, long before the 60 s hang ends.
        t.call(t.server.shutdown())
    finally:
        store.release.set()
        c.close()
        t.loop.call_soon_threadsafe(t.loop.stop)
        t.thread.join(10)
        t.executor.shutdown(wait=False)


def test_after_disc_the_client_is_let_go_before_the_last_write_back():
    store = MemoryBlockStore()
    store.create_device("one", SIZE, OSIZE)
    t = ServerThread(store, ["one"], shutdown_timeout=60.0)
    c = client(t)
    store.write_gate = threading.Event()  # write-back hangs (10 s at most)
    try:
        c.request(p.CMD_WRITE, 0, 5, data=b"hello", cookie=1)
        assert c.reply()[:2] == (1, 0)
        c.request(p.CMD_DISC)
        c.sock.settimeout(5)  # the write-back would keep it open for 10 s
        assert c.closed()
    finally:
        store.write_gate.set()
        t.stop()
    assert store.objects["one"][0][:5] == b"hello"  # and it was stored after


class FlakyUnlockStore(MemoryBlockStore):
    """Removing the lock fails while ``down`` (the backend went away at release)."""

    down = False

    def _control_delete(self, device, key):
        if self.down:
            raise BackendUnavailable("swift: cannot delete the lock: down")
        super()._control_delete(device, key)


def test_our_lock_left_behind_by_a_failed_release_does_not_lock_us_out():
    store = FlakyUnlockStore()
    store.create_device("one", SIZE, OSIZE)
    t = ServerThread(store, ["one"], lease=600, lock_scope="connection")
    try:
        c = client(t)
        eventually(lambda: t.server.exports["one"].lease.valid)
        first = blocklock.read_lock(store, "one")
        store.down = True
        c.request(p.CMD_DISC)
        assert c.closed()
        eventually(lambda: t.server.exports["one"].lease is None)
        assert blocklock.read_lock(store, "one").token == first.token  # left behind
        store.down = False
        c = client(t)  # not refused: our own leftover is broken, naming it
        assert blocklock.read_lock(store, "one").token != first.token
        c.request(p.CMD_WRITE, 0, 2, data=b"ok", cookie=2)
        c.request(p.CMD_FLUSH, cookie=3)
        assert c.reply()[:2] == (2, 0) and c.reply()[:2] == (3, 0)
        c.close()
    finally:
        t.stop()


def test_what_the_last_disconnect_could_not_store_is_recorded(tmp_path):
    store = MemoryBlockStore()
    conf = cfg.ConfigOpts()
    config.register_core_opts(conf)
    conf([], default_config_files=[])
    conf.set_override("state_dir", str(tmp_path))
    store.conf = conf
    store.create_device("one", SIZE, OSIZE)
    t = ServerThread(
        store,
        ["one"],
        retry_attempts=1,
        retry_time=30.0,
        shutdown_timeout=2.0,
        lock_scope="connection",
    )
    try:
        c = client(t)
        eventually(lambda: t.server.exports["one"].lease.valid)
        store.fail_writes = True  # the backend is down
        c.request(p.CMD_WRITE, 0, 3 * OSIZE, data=b"\x01" * (3 * OSIZE), cookie=1)
        assert c.reply()[:2] == (1, 0)
        c.request(p.CMD_FLUSH, cookie=2)
        assert c.reply()[1] == p.EIO
        c.request(p.CMD_DISC)
        assert c.closed()
        eventually(lambda: unstored_records(store, "one"))
    finally:
        store.fail_writes = False
        t.stop()
    (record,) = unstored_records(store, "one")
    assert record.objects == (0, 1, 2) and record.bytes == 3 * OSIZE
    # The backend was failing: straight to this host's state file.
    assert record.where.startswith(str(tmp_path)) and UNSTORED_KEY not in store.control["one"]
    assert "stowkit nbd server" in record.by and "write-back failed" in record.reason
