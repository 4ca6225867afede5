"""The NBD server on a failing Swift: the real Swift behind the fault proxy, real clients.

Each server (`stowkit blockstore serve --port 0`, a subprocess signalled by its own
pid) talks to the harness Swift through a FaultProxy (tools/stack/faultproxy.py)
started in this process, which the tests turn on and off while the clients run:
Swift unreachable in the middle of a copy, 5 % of object requests answered 503, a
rival stealing the lock while a client writes, lock PUTs slower than
`create_settle`, and SIGTERM while Swift hangs.  What the tests check directly in
Swift (contents, timestamps, the lock object) they read with their own
python-swiftclient connection, which bypasses the proxy.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import secrets
import signal
import subprocess
import time

import pytest
from swiftclient import client as swift_client

from stowkit.corelib.blocklock import LOCK_KEY, LockInfo
from stowkit.corelib.blockstore import object_name
from stowkit.corelib.blockunstored import UNSTORED_KEY
from tests.commands import STOWKIT
from tests.fakes.nbd_clients import Backend, run, sha256
from tools.stack.faultproxy import FaultProxy

MiB = 1 << 20
DATA_PUT = r"/disk\.part/\d{8}$"
LOCK_PUT = r"/stowkit\.lock$"
SETTLE = 0.25  # [blockstore_swift] create_settle, the default


class FaultyBackend(Backend):
    """A Backend whose servers reach Swift through ``proxy``; their logs go to files."""

    def __init__(self, conf: str, proxy: FaultProxy, logs) -> None:
        super().__init__(conf, "swift")
        self.proxy = proxy
        self.logs = logs
        self.log_of: dict[int, str] = {}

    def serve(self, *args: str) -> tuple[subprocess.Popen, int]:
        log = self.logs / f"server{len(self.servers)}.log"
        with open(log, "w") as err:
            # stderr to a file: a server logging through a long outage would
            # block on a full pipe nobody reads
            proc = subprocess.Popen(
                [*STOWKIT, "--config-file", self.conf, "blockstore", "serve", "--port", "0",
                 *args],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )  # fmt: skip
        self.servers.append(proc)
        self.log_of[proc.pid] = str(log)
        line = proc.stdout.readline()
        if not line.startswith("serving"):
            proc.kill()
            proc.wait(10)
            raise AssertionError(f"server did not start: {line}{open(log).read()}")
        return proc, int(line.split(":")[2].split("/")[0])

    def log(self, proc: subprocess.Popen) -> str:
        with open(self.log_of[proc.pid]) as f:
            return f.read()


class Faults:
    """The swift record, a unique container prefix, the direct config and connection."""

    def __init__(self, rec: dict, tmp_path) -> None:
        self.rec = rec
        self.tmp = tmp_path
        self.prefix = f"fault{secrets.token_hex(3)}-"
        self.state_dir = tmp_path / "state"
        self.proxies: list[FaultProxy] = []
        self.backends: list[FaultyBackend] = []
        self.swift = swift_client.Connection(
            authurl=rec["auth_url"], user=rec["user"], key=rec["key"], auth_version="1",
            retries=3,
        )  # fmt: skip
        self.direct = Backend(self.conf("direct", rec["auth_url"]), "swift")

    def conf(self, name: str, auth_url: str, swift: str = "", blockstore: str = "") -> str:
        path = self.tmp / f"{name}.conf"
        path.write_text(
            f"[DEFAULT]\nstate_dir = {self.state_dir}\n"
            f"[blockstore]\nbackend = swift\n{blockstore}"
            f"[blockstore_swift]\nauth_url = {auth_url}\nuser = {self.rec['user']}\n"
            f"key = {self.rec['key']}\ncontainer_prefix = {self.prefix}\n{swift}"
        )
        return str(path)

    def backend(
        self, swift: str = "timeout = 2\nretries = 2\nmax_backoff = 1\n", blockstore: str = ""
    ) -> FaultyBackend:
        """A server config through a new fault proxy (seeded: runs repeat)."""
        proxy = FaultProxy(self.rec["proxy_url"], seed=len(self.proxies) + 11).start()
        self.proxies.append(proxy)
        conf = self.conf(f"proxied{len(self.proxies)}", f"{proxy.url}/auth/v1.0", swift, blockstore)
        logs = self.tmp / f"logs{len(self.proxies)}"
        logs.mkdir()
        b = FaultyBackend(conf, proxy, logs)
        self.backends.append(b)
        return b

    def container(self, name: str) -> str:
        return self.prefix + name

    def objects(self, name: str) -> dict[str, dict]:
        """Every data object of device ``name``: its listing entry (hash, bytes, ...)."""
        _, listing = self.swift.get_container(
            self.container(name), prefix="disk.part/", full_listing=True
        )
        return {o["name"]: o for o in listing}

    def show(self, name: str) -> dict:
        return json.loads(self.direct.stowkit("blockstore", "show", name, "-f", "json").stdout)

    def cleanup(self) -> None:
        for b in self.backends:
            b.cleanup()
        for proxy in self.proxies:
            proxy.stop()
        listing = self.direct.stowkit("blockstore", "list", "--quick", "-f", "value", "-c",
                                      "name", check=False)  # fmt: skip
        for name in listing.stdout.split():
            self.direct.stowkit("blockstore", "delete", name, "--force", check=False)


@pytest.fixture
def faults(service, tmp_path):
    f = Faults(service("swift"), tmp_path)
    yield f
    f.cleanup()


def wait_until(what: str, probe, timeout: float = 60, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def random_file(path, size: int) -> str:
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
    return str(path)


def lock_reads_since_create(proxy: FaultProxy) -> int:
    """How often the lock was read as it stands (200) since it was created: the
    confirmation, then one re-read by each client connecting to a held lock."""
    created = stored_puts(proxy, LOCK_PUT)
    if not created:
        return 0
    return sum(s.time > created[0].time and s.outcome == "200" for s in proxy.seen("GET", LOCK_PUT))


def stored_puts(proxy: FaultProxy, path: str = DATA_PUT) -> list:
    return [s for s in proxy.seen("PUT", path) if s.outcome.startswith("2")]


def test_swift_unreachable_for_30_s_in_the_middle_of_a_256m_copy(faults, tmp_path):
    # 256 MiB copied into a 288 MiB device: the last 32 MiB stay holes.
    b = faults.backend(blockstore="writeback_retry_time = 10\nwriteback_retry_attempts = 1000\n")
    faults.direct.setup("disk", size="288M", object_size="1M")
    proc, port = b.serve("disk", "--cache-size", "64M")
    uri = f"nbd://127.0.0.1:{port}/disk"
    src = random_file(tmp_path / "src.raw", 256 * MiB)
    copy = subprocess.Popen(
        ["timeout", "600", "nbdcopy", "--flush", src, uri],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_until("the copy to store objects", lambda: len(stored_puts(b.proxy)) >= 10)
    down = b.proxy.add("drop", duration=30)  # every request: connection closed, no answer
    outage_end = down.until
    # Meanwhile the server keeps serving: a second client connects and reads
    # what it can answer without Swift (the tail is holes, known from the listing).
    info = run("nbdinfo", "--json", uri, timeout=60)
    assert json.loads(info.stdout)["exports"][0]["export-size"] == 288 * MiB
    tail = run("qemu-io", "-f", "raw", "-r", "-c", f"read -P 0 {270 * MiB} {4 * MiB}", uri,
               timeout=60)  # fmt: skip
    assert "Pattern verification failed" not in tail.stdout and "read 4194304" in tail.stdout
    out, err = copy.communicate(timeout=600)
    ended = time.monotonic()
    assert proc.poll() is None, b.log(proc)
    if copy.returncode == 0:
        # Completed after Swift came back: every byte must be there.
        assert ended >= outage_end
    else:
        # Or it failed, while Swift was still down: no request waited for Swift
        # beyond the retry budget (10 s of a 30 s outage), and the error was EIO.
        assert ended < outage_end, (
            f"the copy hung until Swift came back ({ended - down.start:.1f} s): {err}\n"
            + b.log(proc)[-3000:]
        )
        assert "Input/output error" in err, err
    # The server is still serving; once Swift is back a new copy works.
    wait_until("the outage to end", lambda: time.monotonic() >= outage_end, timeout=60)
    run("nbdcopy", "--flush", src, uri, timeout=600)
    back = tmp_path / "back.raw"
    run("nbdcopy", uri, str(back), timeout=600)
    os.truncate(back, 256 * MiB)  # the tail holes: zeros past the source
    assert sha256(back) == sha256(src)
    assert b.stop(proc) == 0, b.log(proc)
    # Read back from Swift itself, not from the server's cache.
    proc, port = b.serve("disk", "--read-only")
    again = tmp_path / "again.raw"
    run("nbdcopy", f"nbd://127.0.0.1:{port}/disk", str(again), timeout=600)
    os.truncate(again, 256 * MiB)
    assert sha256(again) == sha256(src)
    assert b.stop(proc) == 0
    # The server held the device all along (lock_scope server): what the failed
    # copy could not store stayed in its cache and was stored once Swift was
    # back, so nothing is recorded as lost.
    assert not faults.show("disk")["unstored_objects"]


def test_five_percent_of_object_requests_answered_503(faults, tmp_path):
    b = faults.backend(swift="timeout = 5\nretries = 5\nmax_backoff = 1\n")
    faults.direct.setup("disk", size="64M", object_size="256K")
    b.proxy.add("503", share=0.05, path=r"/disk\.part/")
    proc, port = b.serve("disk")
    src = random_file(tmp_path / "src.raw", 64 * MiB)
    run("nbdcopy", "--flush", src, f"nbd://127.0.0.1:{port}/disk", timeout=600)
    assert b.stop(proc) == 0, b.log(proc)
    proc, port = b.serve("disk")  # a cold cache: everything read from Swift
    back = tmp_path / "back.raw"
    run("nbdcopy", f"nbd://127.0.0.1:{port}/disk", str(back), timeout=600)
    assert sha256(back) == sha256(src)
    assert b.stop(proc) == 0
    failed_puts = [s for s in b.proxy.seen("PUT", DATA_PUT) if s.outcome == "503"]
    failed_gets = [s for s in b.proxy.seen("GET", DATA_PUT) if s.outcome == "503"]
    assert failed_puts and failed_gets  # the faults really happened, and were retried
    assert len(faults.objects("disk")) == 256


def test_a_rival_takes_the_lock_while_a_client_writes(faults):
    b = faults.backend()
    faults.direct.setup("disk", size="32M", object_size="256K")
    container = faults.container("disk")
    # A 30 s lease: the next renewal is 10 s away when the lock is stolen.
    proc, port = b.serve("disk", "--lease", "30")
    commands = []
    for i in range(400):
        offset = (i % 128) * 256 * 1024
        commands += ["-c", f"write -P 0x11 {offset} 262144", "-c", "flush", "-c", "sleep 25"]
    writer = subprocess.Popen(
        ["timeout", "300", "qemu-io", "-f", "raw", *commands, f"nbd://127.0.0.1:{port}/disk"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    wait_until("the writer to store objects", lambda: len(stored_puts(b.proxy)) >= 5)
    # The theft: the rival's lock replaces ours in one PUT (a delete first
    # would let the server's re-read find no lock at all in between, and the
    # log could not name the rival).
    theft = time.time()
    rival = LockInfo.new("rival stowkit", 60)
    faults.swift.put_object(container, LOCK_KEY, rival.to_json())
    time.sleep(SETTLE)  # a rival confirms its lock before writing
    rival_start = time.time()
    pattern = b"\xee" * (256 * 1024)
    for i in range(128):
        faults.swift.put_object(container, object_name(i), pattern)
    output, _ = writer.communicate(timeout=300)
    assert "Input/output error" in output, output[-2000:]
    # Nothing the old server sent reached Swift once the rival could write ...
    late = [s for s in stored_puts(b.proxy) if s.time >= theft + SETTLE]
    assert not late, late
    # ... so every object is the rival's, stored after it took over ...
    for i in range(128):
        headers, body = faults.swift.get_object(container, object_name(i))
        assert body == pattern, f"object {i} was overwritten after the theft"
        assert float(headers["x-timestamp"]) >= rival_start
    # ... the lock is still the rival's (no renewal overwrote it), and the old
    # server wrote no record into a device it had lost.
    assert LockInfo.from_json(faults.swift.get_object(container, LOCK_KEY)[1]).token == rival.token
    assert b.stop(proc) == 0, b.log(proc)
    log = b.log(proc)
    assert "lost the lock" in log and "rival stowkit" in log, log
    with pytest.raises(swift_client.ClientException):
        faults.swift.head_object(container, UNSTORED_KEY)
    shown = faults.show("disk")
    assert shown["lock_owner"] == "rival stowkit"
    if shown["unstored_objects"]:
        assert shown["unstored_recorded_in"].startswith(str(faults.state_dir)), shown


def test_lock_puts_slower_than_create_settle_two_servers_race(faults, tmp_path):
    faults.direct.setup("disk", size="16M", object_size="256K")
    # Requests may take 30 s: a delayed lock PUT must not time out and be retried.
    # The first server allows 2 s for a create to settle, the second the default.
    first = faults.backend(swift="timeout = 30\nretries = 2\ncreate_settle = 2\n")
    second = faults.backend(swift="timeout = 30\nretries = 2\n")
    # Both lock PUTs start at once and pass If-None-Match.  The first lands after
    # 1 s (within its settle time: it rightly wins at its re-read, 2 s later);
    # the second, started a little later, lands after 6 s, long after that re-read.
    first.proxy.add("delay_body", seconds=1, method="PUT", path=LOCK_PUT, count=1)
    second.proxy.add("delay_body", seconds=6, method="PUT", path=LOCK_PUT, count=1)
    p1, port1 = first.serve("disk", "--lock-scope", "connection")
    p2, port2 = second.serve("disk", "--lock-scope", "connection")
    # Each client writes, flushes, and stays connected for 8 s: the first
    # one's lock is still held when the second one's create lands.
    writers = [
        subprocess.Popen(
            ["timeout", "120", "qemu-io", "-f", "raw", "-c", f"write -P {n} 0 8M",
             "-c", "flush", "-c", "sleep 8000", f"nbd://127.0.0.1:{port}/disk"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for n, port in ((1, port1), (2, port2))
    ]  # fmt: skip
    outputs = [w.communicate(timeout=150)[0] for w in writers]
    # The race did happen: both creates went through (201), neither got 412.
    for b in (first, second):
        seen = sorted(b.proxy.seen("PUT", LOCK_PUT), key=lambda s: s.time)
        assert seen and seen[0].outcome == "201", seen
    storers = [b for b in (first, second) if stored_puts(b.proxy)]
    assert len(storers) <= 1, [len(stored_puts(b.proxy)) for b in (first, second)]
    # The slow one knew its lock could not be trusted, and its client heard of it.
    assert "longer than the settle time" in second.log(p2), second.log(p2)
    assert "Input/output error" in outputs[1], outputs[1]
    assert "Input/output error" not in outputs[0], outputs[0]  # the first one won
    assert stored_puts(first.proxy)
    assert first.stop(p1) == 0 and second.stop(p2) == 0


def test_lock_puts_slower_than_create_settle_two_servers_start_at_once(faults, tmp_path):
    # The same race at the servers' start (lock_scope = server, the default):
    # the server whose create took longer than the settle time must not start,
    # and the other serves; at most one of them ever stores an object.
    faults.direct.setup("disk", size="16M", object_size="256K")
    # The second server's process takes a few seconds to reach its lock PUT:
    # the first's lands after 6 s (so both pass If-None-Match), is re-read 8 s
    # later and wins; the second's lands after 15 s, long after that re-read.
    first = faults.backend(swift="timeout = 30\nretries = 2\ncreate_settle = 8\n")
    second = faults.backend(swift="timeout = 30\nretries = 2\n")
    first.proxy.add("delay_body", seconds=6, method="PUT", path=LOCK_PUT, count=1)
    second.proxy.add("delay_body", seconds=15, method="PUT", path=LOCK_PUT, count=1)
    # The first starts first (its create is the older one), the second a little later.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        started = pool.submit(first.serve, "disk")  # ~14 s: its create (6 s), its 8 s settle
        # Its read of the lock (404) comes just before its create (logged when
        # answered: the delayed create itself is logged only once it lands).
        wait_until("the first's lock read", lambda: first.proxy.seen("GET", LOCK_PUT))
        late = subprocess.Popen(
            [*STOWKIT, "--config-file", second.conf, "blockstore", "serve", "--port", "0",
             "disk"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        p1, port1 = started.result(timeout=120)
    out, err = late.communicate(timeout=120)
    assert late.returncode == 8, err
    last = err.strip().splitlines()[-1]  # the server's log, then the command's one line
    assert last.startswith("stowkit: ") and "longer than the settle time" in last, err
    assert "serving" not in out
    seen = sorted(second.proxy.seen("PUT", LOCK_PUT), key=lambda s: s.time)
    assert seen and seen[0].outcome == "201", seen  # the race did happen
    # The first serves.  The second's create replaced the first's lock object
    # (newer) and then removed it as untrusted: the client's connection re-reads
    # the lock, finds it gone, and takes it again.
    uri = f"nbd://127.0.0.1:{port1}/disk"
    run("qemu-io", "-f", "raw", "-c", "write -P 0x5c 0 8M", "-c", "flush", uri)
    out = run("qemu-io", "-f", "raw", "-r", "-c", "read -P 0x5c 0 8M", uri).stdout
    assert "Pattern verification failed" not in out
    assert stored_puts(first.proxy) and not stored_puts(second.proxy)
    assert first.stop(p1) == 0


def test_sigterm_while_swift_hangs_exits_within_the_shutdown_timeout(faults):
    # A hung request lasts 60 s (no retry); the server may take 5 s to stop.
    b = faults.backend(
        swift="timeout = 60\nretries = 0\n",
        blockstore="shutdown_timeout = 5\n",
    )
    faults.direct.setup("disk", size="16M", object_size="256K")
    proc, port = b.serve("disk")
    writer = subprocess.Popen(
        ["timeout", "300", "qemu-io", "-f", "raw", "-c", "sleep 3000", "-c", "write -P 0x22 0 4M",
         "-c", "sleep 300000", f"nbd://127.0.0.1:{port}/disk"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        # The lock taken and confirmed at the server's start, then the client
        # connected (its connection re-reads the held lock) ...
        wait_until("the client's connection", lambda: lock_reads_since_create(b.proxy) >= 2)
        # ... then Swift takes requests and never answers, before the write arrives.
        b.proxy.add("hang", path=r"/v1/")
        # Write-back starts, and its first request to Swift hangs.
        wait_until("write-back to reach Swift", lambda: [
            s for s in b.proxy.seen() if s.outcome == "hang"
        ])  # fmt: skip
        proc.send_signal(signal.SIGTERM)
        # 5 s of shutdown_timeout plus a margin for unlocking, recording and
        # exiting; a worker thread stuck in its 60 s request must not hold exit.
        assert proc.wait(5 + 15) == 0
    finally:
        writer.terminate()  # GNU timeout passes SIGTERM on to qemu-io
        writer.wait(10)
    log = b.log(proc)
    assert "objects (" in log and "bytes) were not stored (" in log, log
    b.proxy.clear()
    b.proxy.release()
    shown = faults.show("disk")
    assert shown["unstored_objects"] == 16 and shown["unstored_bytes"] == 4 * MiB, shown
    assert shown["unstored_ranges"] == "0-15"
    assert shown["unstored_recorded_in"].startswith(str(faults.state_dir)), shown
    assert "stowkit nbd server" in shown["unstored_by"]
