"""The Swift BlockStore, the control commands and swiftnbd-ctl against a real Swift.

Every test works in containers named with a random prefix, and removes them.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
import threading
import time

import pytest
from swiftclient import client as swift_client

from stowkit.corelib import blockcopy, blocklease, blocklock, config, registry
from stowkit.corelib.blocklock import DeviceLocked
from stowkit.corelib.blockstore import object_name
from stowkit.corelib.errors import AlreadyExists, BackendUnavailable, InvalidName, NotFound
from stowkit.plugins.swift.store import SwiftBlockStore
from tests.fakes.harness import missing

OS = 64 << 10
SIZE = 32 * OS


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def swift(service):
    return service("swift")


@pytest.fixture
def prefix():
    return f"t{secrets.token_hex(3)}-"


@pytest.fixture
def raw(swift):
    """A plain swiftclient connection, to look behind the backend's back."""
    conn = swift_client.Connection(swift["auth_url"], swift["user"], swift["key"])
    yield conn
    conn.close()


def make_store(swift, prefix, **extra) -> SwiftBlockStore:
    conf = config.load_conf()
    options = dict(
        auth_url=swift["auth_url"],
        user=swift["user"],
        key=swift["key"],
        container_prefix=prefix,
        retries=2,
        timeout=20,
    )
    options.update(extra)
    store = registry.load("blockstore", conf, "swift", **options)
    assert isinstance(store, SwiftBlockStore)
    return store


@pytest.fixture
def store(swift, prefix, raw):
    drv = make_store(swift, prefix)
    yield drv
    # Clean up whatever a test left (devices or bare containers).
    _, containers = raw.get_account(prefix=prefix, full_listing=True)
    for c in containers:
        _, objs = raw.get_container(c["name"], full_listing=True)
        for o in objs:
            raw.delete_object(c["name"], o["name"])
        raw.delete_container(c["name"])
    drv.close()


def test_settings_are_container_metadata(store, prefix, raw):
    store.create_device("d", SIZE, OS)
    headers = raw.head_container(prefix + "d")
    assert headers["x-container-meta-stowkit-size"] == str(SIZE)
    assert headers["x-container-meta-stowkit-object-size"] == str(OS)
    assert headers["x-container-meta-stowkit-format"] == "1"
    dev = store.get_device("d", details=True)
    assert (dev.size, dev.object_size, dev.objects_stored, dev.lock) == (SIZE, OS, 0, None)
    with pytest.raises(AlreadyExists):
        store.create_device("d", SIZE, OS)
    assert [d.name for d in store.list_devices()] == ["d"]


def test_objects_and_zeros(store, prefix, raw):
    store.create_device("d", SIZE, OS)
    assert store.read_object("d", 5) is None  # never written: zeros, from one GET 404
    data = os.urandom(OS)
    store.write_object("d", 5, data)
    assert store.read_object("d", 5) == data
    _, body = raw.get_object(prefix + "d", "disk.part/00000005")
    assert body == data
    store.delete_object("d", 5)
    assert store.read_object("d", 5) is None
    store.delete_object("d", 5)
    assert list(store.list_objects("d")) == []


def test_read_range_is_one_ranged_get(store, prefix, raw):
    assert "ranged_read" in store.capabilities
    store.create_device("d", SIZE, OS)
    data = os.urandom(OS)
    store.write_object("d", 1, data)
    assert store.read_range("d", 1, 4096, 4096) == data[4096:8192]
    assert store.read_range("d", 1, OS - 3, 3) == data[-3:]
    assert store.read_range("d", 2, 0, 512) is None  # a hole: 404
    # A shorter object (as swiftnbd may leave) reads zero-padded, also past its end.
    raw.put_object(prefix + "d", "disk.part/00000003", b"abc")
    assert store.read_range("d", 3, 1, 4) == b"bc\x00\x00"
    assert store.read_range("d", 3, 100, 4) == bytes(4)


def test_parallel_writes_from_threads(store):
    store.create_device("d", SIZE, OS)
    blocks = {i: os.urandom(OS) for i in range(SIZE // OS)}
    errors = []

    def put(i):
        try:
            store.write_object("d", i, blocks[i])
        except Exception as exc:  # pragma: no cover - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=put, args=(i,)) for i in blocks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert list(store.list_objects("d")) == sorted(blocks)
    assert all(store.read_object("d", i) == blocks[i] for i in blocks)


def test_upload_download_round_trip_sparse(store, prefix, raw, tmp_path):
    store.create_device("d", SIZE, OS)
    src = tmp_path / "src.img"
    with open(src, "wb") as f:
        f.write(os.urandom(3 * OS))  # objects 0-2
        f.seek(10 * OS + 100)
        f.write(b"tail")  # object 10
        f.truncate(20 * OS)  # shorter than the device: the rest reads as zeros
    with blocklease.held(store, "d", "test upload"):
        stats = blockcopy.upload(store, "d", str(src), threads=4)
    assert (stats.stored, stats.holes, stats.deleted) == (4, 28, 0)
    _, objs = raw.get_container(prefix + "d", full_listing=True)
    names = sorted(o["name"] for o in objs)
    assert names == [*(object_name(i) for i in (0, 1, 2, 10)), "stowkit.device"]
    dst = tmp_path / "dst.img"
    stats = blockcopy.download(store, "d", str(dst), threads=4)
    assert os.path.getsize(dst) == SIZE
    with open(dst, "rb") as f:
        back = f.read()
    assert back[: 20 * OS] == src.read_bytes()
    assert back[20 * OS :] == bytes(SIZE - 20 * OS)
    # Zeros uploaded over data delete the objects instead of storing zeros.
    zero = tmp_path / "zero.img"
    zero.write_bytes(bytes(SIZE))
    with blocklease.held(store, "d", "test upload"):
        stats = blockcopy.upload(store, "d", str(zero))
    assert stats.deleted == 4 and stats.stored == 0
    assert list(store.list_objects("d")) == []


def test_lock_is_exclusive_between_clients(swift, store, prefix):
    store.create_device("d", SIZE, OS)
    other = make_store(swift, prefix)  # a second client, own connections
    try:
        mine = blocklock.take(store, "d", "server-one", lease_seconds=60)
        with pytest.raises(DeviceLocked) as err:
            blocklock.take(other, "d", "server-two")
        assert err.value.holder.token == mine.token
        assert "server-one" in str(err.value) and f"pid {os.getpid()}" in str(err.value)
        assert other.get_device("d").lock.owner == "server-one"
        renewed = blocklock.renew(store, "d", mine, 120)
        assert renewed.expires > mine.expires
        blocklock.unlock(store, "d", renewed)
        assert blocklock.take(other, "d", "server-two").owner == "server-two"
    finally:
        other.close()


def race(swift, prefix, action, refusal):
    """Run ``action(client, i)`` from six clients at once: (results, refusals)."""
    clients = [make_store(swift, prefix) for _ in range(6)]
    won, refused = [], []
    barrier = threading.Barrier(len(clients))

    def contend(i):
        barrier.wait()
        try:
            won.append(action(clients[i], i))
        except refusal as exc:
            refused.append(exc)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in clients:
        c.close()
    assert len(won) == 1 and len(refused) == len(clients) - 1
    return won[0]


def test_concurrent_lockers_one_winner(swift, store, prefix):
    store.create_device("d", SIZE, OS)
    winner = race(swift, prefix, lambda c, i: blocklock.take(c, "d", f"c{i}"), DeviceLocked)
    assert blocklock.read_lock(store, "d").token == winner.token


def test_concurrent_setups_one_winner_whose_settings_stay(swift, store, prefix):
    made = race(swift, prefix, lambda c, i: c.create_device("d", (i + 1) * SIZE, OS), AlreadyExists)
    assert store.get_device("d").size == made.size  # nobody overwrote the winner's settings


def test_setup_interrupted_before_its_metadata_still_reads_as_a_device(store, prefix, raw):
    # What a setup killed between the settings object and the container POST leaves.
    raw.put_container(prefix + "half")
    raw.put_object(prefix + "half", "stowkit.device",
                   b'{"format": 1, "size": %d, "object_size": %d}' % (SIZE, OS))  # fmt: skip
    dev = store.get_device("half")
    assert (dev.size, dev.object_size) == (SIZE, OS)
    assert "half" in [d.name for d in store.list_devices()]
    store.delete_device("half")
    assert raw.get_account(prefix=prefix + "half")[1] == []


def test_stale_lock_taken_over_only_after_lease(swift, store, prefix):
    store.create_device("d", SIZE, OS)
    crashed = blocklock.take(store, "d", "crashed-server", lease_seconds=120)
    other = make_store(swift, prefix)
    try:
        with pytest.raises(DeviceLocked, match="crashed-server"):
            blocklock.take(other, "d", "new-server")
        # Its last renewal asked for a short lease, then the server "died".
        crashed = blocklock.renew(store, "d", crashed, lease_seconds=1.5)
        while not blocklock.read_lock(other, "d").expired():
            time.sleep(0.2)
        new = blocklock.take(other, "d", "new-server")
        assert new.taken_over is not None and new.taken_over.token == crashed.token
        assert blocklock.read_lock(store, "d").token == new.token
        with pytest.raises(DeviceLocked, match="new-server"):
            blocklock.renew(store, "d", crashed)
    finally:
        other.close()


def test_delete_refused_while_locked_then_objects_and_container_gone(store, prefix, raw):
    store.create_device("d", SIZE, OS)
    store.write_object("d", 1, os.urandom(OS))
    blocklock.take(store, "d", "server")
    with pytest.raises(DeviceLocked):
        store.delete_device("d")
    assert store.delete_device("d", force=True).owner == "server"
    with pytest.raises(swift_client.ClientException) as err:
        raw.head_container(prefix + "d")
    assert err.value.http_status == 404
    with pytest.raises(NotFound):
        store.get_device("d")


def test_swiftnbd_container_is_readable(store, prefix, raw):
    container = prefix + "legacy"
    raw.put_container(
        container,
        headers={
            "X-Container-Meta-Swiftnbd-Version": "1",
            "X-Container-Meta-Swiftnbd-Objects": "16",
            "X-Container-Meta-Swiftnbd-Object-Size": str(OS),
        },
    )
    data = os.urandom(OS)
    raw.put_object(container, "disk.part/00000003", data)
    dev = store.get_device("legacy", details=True)
    assert (dev.size, dev.object_size, dev.objects_stored) == (16 * OS, OS, 1)
    assert store.read_object("legacy", 3) == data
    assert store.read_object("legacy", 4) is None


def test_plain_container_is_not_a_device(store, prefix, raw):
    raw.put_container(prefix + "plain")
    with pytest.raises(NotFound, match="not a stowkit device"):
        store.get_device("plain")
    with pytest.raises(AlreadyExists):
        store.create_device("plain", SIZE, OS)
    assert store.list_devices() == []


def test_bad_credentials_and_names(swift, prefix):
    bad = make_store(swift, prefix, key="wrong", retries=0)
    with pytest.raises(BackendUnavailable, match="authentication failed"):
        bad.list_devices()
    with pytest.raises(InvalidName):
        bad.get_device("../../x")


def test_keystone_v3(service, prefix):
    rec = service("swift")
    if "keystone" not in rec:
        missing("swift was started without keystone (start keystone, then swift)")
    ks = service("keystone")
    member = ks["member"]
    store = make_store(
        rec,
        prefix,
        auth_version="3",
        auth_url=member["auth_url"],
        username=member["username"],
        password=member["password"],
        project_name=member["project_name"],
        region_name=rec["keystone"]["region"],
    )
    try:
        store.create_device("k", SIZE, OS)
        data = os.urandom(OS)
        store.write_object("k", 0, data)
        assert store.read_object("k", 0) == data
        lock = blocklock.take(store, "k", "ks")
        blocklock.unlock(store, "k", lock)
        store.delete_device("k")
        assert store.list_devices() == []
    finally:
        store.close()


# -- the command line ----------------------------------------------------------


@pytest.fixture
def cli(swift, prefix, store, tmp_path):
    conf = tmp_path / "stowkit.conf"
    conf.write_text(
        "[DEFAULT]\n"
        f"state_dir = {tmp_path / 'state'}\n"
        "[blockstore]\nbackend = swift\n"
        "[blockstore_swift]\n"
        f"auth_url = {swift['auth_url']}\nuser = {swift['user']}\nkey = {swift['key']}\n"
        f"container_prefix = {prefix}\n"
    )

    def run(*args, ok=True):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "stowkit.cli.app",
                "--config-file",
                str(conf),
                "blockstore",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "Traceback" not in proc.stderr
        if ok:
            assert proc.returncode == 0, proc.stderr
        return proc

    return run


def test_cli_round_trip(cli, tmp_path):
    src = tmp_path / "src.img"
    with open(src, "wb") as f:
        f.write(os.urandom(2 * OS))
        f.seek(SIZE - OS)
        f.write(os.urandom(OS))
    cli("setup", "dev1", "--size", "2M", "--object-size", "64K")
    cli("upload", str(src), "dev1")
    out = cli("list", "-f", "value").stdout.split()
    assert out[:3] == ["dev1", "2097152", "65536"] and "3" in out
    show = cli("show", "dev1", "-f", "value", "-c", "objects_stored").stdout.strip()
    assert show == "3"
    dst = tmp_path / "dst.img"
    cli("download", "dev1", str(dst))
    assert sha256(dst) == sha256(src)
    cli("delete", "dev1")
    assert cli("list", "-f", "value").stdout.strip() == ""


def test_cli_lock_unlock_reports_holder(cli):
    cli("setup", "dev2", "--size", "1M")
    cli("lock", "dev2")
    second = cli("lock", "dev2", ok=False)
    assert second.returncode == 8
    assert second.stderr.count("\n") == 1 and "locked by stowkit blockstore lock" in second.stderr
    refused = cli("delete", "dev2", ok=False)
    assert refused.returncode == 8 and "unlock it first" in refused.stderr
    out = cli("unlock", "dev2").stdout
    assert "broke the lock of stowkit blockstore lock" in out and "pid" in out
    assert "was not locked" in cli("unlock", "dev2").stdout
    cli("delete", "dev2")


@pytest.mark.parametrize(
    "args, code, fragment",
    [
        (("setup", "x", "--size", "1Q"), 3, "invalid size"),
        (("setup", "x", "--size", "1000"), 3, "multiple of the object size"),
        (("setup", "../etc", "--size", "1M"), 4, "invalid device name"),
        (("setup", "a;rm -rf", "--size", "1M"), 4, "invalid device name"),
        (("show", "missing"), 5, "not found"),
        (("download", "missing", "/tmp/never"), 5, "not found"),
        (("upload", "/nonexistent/file", "missing"), 3, "cannot read"),
        (("unlock", "missing"), 5, "not found"),
    ],
)
def test_cli_bad_input_one_line(cli, args, code, fragment):
    proc = cli(*args, ok=False)
    assert proc.returncode == code
    assert fragment in proc.stderr and proc.stderr.count("\n") == 1


def test_swiftnbd_ctl(swift, store, prefix, tmp_path):
    container = prefix + "nbd0"
    secrets_file = tmp_path / "secrets.conf"
    secrets_file.write_text(
        f"[{container}]\nusername = {swift['user']}\npassword = {swift['key']}\n"
    )
    secrets_file.chmod(0o600)

    def ctl(*args):
        return subprocess.run(
            [sys.executable, "-m", "stowkit.cli.compat.swiftnbd_ctl",
             "--secrets", str(secrets_file), "-a", swift["auth_url"], *args],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    assert ctl("setup", container, "16").returncode == 0
    dev = store.get_device("nbd0")  # the same device through the stowkit backend
    assert (dev.object_count, dev.object_size) == (16, 64 << 10)
    listed = ctl("list", "-s")
    assert listed.stdout == f"{container} objects=16 size=65536 (version=1, unlocked)\n"
    assert ctl("lock", container).returncode == 0
    assert blocklock.read_lock(store, "nbd0").owner == "swiftnbd-ctl"
    assert "locked by swiftnbd-ctl" in ctl("list", "-s").stdout
    assert ctl("delete", container).returncode != 0
    unlocked = ctl("unlock", container)
    assert unlocked.returncode == 0 and "lock is: swiftnbd-ctl" in unlocked.stderr
    assert ctl("unlock", container).returncode == 1  # nothing to do, as swiftnbd says
    image = tmp_path / "img"
    assert ctl("download", container, str(image), "-q").returncode == 0
    assert image.read_bytes() == bytes(16 << 16)
    assert ctl("delete", container).returncode == 0
    with pytest.raises(NotFound):
        store.get_device("nbd0")
    for proc in (ctl("setup", "x", "16"), ctl("bogus")):
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
