"""Whole-device copies and the held lock, on the local backend."""

import os
import threading

import pytest

from stowkit.corelib import blockcopy, blocklease, blocklock, config, registry
from stowkit.corelib.blocklock import DeviceLocked
from stowkit.corelib.errors import InvalidArgument

OS = 64 << 10
SIZE = 32 * OS


@pytest.fixture
def store(tmp_path):
    conf = config.load_conf(overrides=[(None, "state_dir", str(tmp_path / "state"))])
    drv = registry.load("blockstore", conf, "local")
    drv.create_device("d", SIZE, OS)
    return drv


def sparse_image(path, size=20 * OS):
    with open(path, "wb") as f:
        f.write(os.urandom(2 * OS))
        f.seek(7 * OS + 5)
        f.write(b"x")
        f.truncate(size)


def test_upload_skips_zero_objects_and_download_keeps_holes(store, tmp_path):
    src = tmp_path / "src"
    sparse_image(src)
    progress = []
    stats = blockcopy.upload(
        store, "d", str(src), threads=4, progress=lambda d, t: progress.append((d, t))
    )
    assert (stats.stored, stats.holes, stats.deleted, stats.bytes) == (3, 29, 0, SIZE)
    assert list(store.list_objects("d")) == [0, 1, 7]
    assert progress[-1] == (SIZE, SIZE)
    dst = tmp_path / "dst"
    stats = blockcopy.download(store, "d", str(dst), threads=4)
    assert (stats.stored, stats.holes) == (3, 29)
    data = dst.read_bytes()
    assert data[: 20 * OS] == src.read_bytes() and data[20 * OS :] == bytes(12 * OS)
    # holes stay holes: far fewer blocks allocated than the size
    assert os.stat(dst).st_blocks * 512 <= 4 * OS


def test_upload_replaces_previous_content(store, tmp_path):
    store.write_object("d", 30, b"\x07" * OS)
    store.write_object("d", 0, b"\x07" * OS)
    src = tmp_path / "src"
    src.write_bytes(bytes(OS) + b"\x01" * OS)
    stats = blockcopy.upload(store, "d", str(src))
    assert stats.deleted == 2 and stats.stored == 1
    assert list(store.list_objects("d")) == [1]


def test_upload_refuses_a_file_larger_than_the_device(store, tmp_path):
    src = tmp_path / "big"
    src.write_bytes(b"\x01" * (SIZE + 1))
    with pytest.raises(InvalidArgument, match="more than device"):
        blockcopy.upload(store, "d", str(src))
    assert list(store.list_objects("d")) == []


def test_download_is_atomic_for_regular_files(store, tmp_path, monkeypatch):
    dst = tmp_path / "dst"
    dst.write_bytes(b"old content")
    store.write_object("d", 3, b"\x02" * OS)

    def broken(device, index):
        raise RuntimeError("network down")

    monkeypatch.setattr(store, "read_object", broken)
    with pytest.raises(RuntimeError):
        blockcopy.download(store, "d", str(dst))
    assert dst.read_bytes() == b"old content"
    assert sorted(os.listdir(tmp_path)) == ["dst", "state"]


def test_download_into_a_device_node(store, tmp_path):
    # /dev/null stands in for a block device: written in place, never renamed over.
    store.write_object("d", 1, b"\x03" * OS)
    stats = blockcopy.download(store, "d", "/dev/null", threads=2)
    assert (stats.stored, stats.holes, stats.bytes) == (1, 31, SIZE)
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")


def test_download_refuses_a_directory(store, tmp_path):
    with pytest.raises(InvalidArgument, match="directory"):
        blockcopy.download(store, "d", str(tmp_path))


def test_held_lock_renews_and_releases(store):
    with blocklease.held(store, "d", "copy", lease_seconds=3) as lease:
        first = blocklock.read_lock(store, "d").expires
        while blocklock.read_lock(store, "d").expires == first:
            threading.Event().wait(0.1)
        assert blocklock.read_lock(store, "d").token == lease.info.token
        with pytest.raises(DeviceLocked):
            blocklock.take(store, "d", "other")
    assert blocklock.read_lock(store, "d") is None


def test_held_lock_reports_a_broken_lock(store):
    with pytest.raises(DeviceLocked, match="lost|gone"):
        with blocklease.held(store, "d", "copy", lease_seconds=60):
            blocklock.unlock(store, "d", force=True)
    with pytest.raises(DeviceLocked, match="now held by thief"):
        with blocklease.held(store, "d", "copy", lease_seconds=60):
            blocklock.unlock(store, "d", force=True)
            blocklock.take(store, "d", "thief")
    assert blocklock.read_lock(store, "d").owner == "thief"
