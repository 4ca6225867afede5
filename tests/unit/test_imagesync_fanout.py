"""One read of the master per image, fanned out to every region being synced."""

from __future__ import annotations

import collections
import hashlib
import threading
import time

import pytest

from stowkit.corelib.errors import BackendUnavailable
from stowkit.corelib.imagesync import fanout
from stowkit.corelib.imagesync import plan as P
from tests.fakes.imagesync import build_scenario, engine, make_store, put

REGIONS = ("RegionA", "RegionB", "RegionC")
PIECE = 7  # bytes per chunk the wrapper hands out: several chunks per image


class Wrapped:
    """The local store, counting master reads and misbehaving in one region on demand."""

    def __init__(self, inner, region=None, fail_after=None, block=None):
        self.inner = inner
        self.reads: collections.Counter[str] = collections.Counter()
        self.region = region
        self.fail_after = fail_after  # chunks read before create_image raises
        self.block = block  # an Event the region's create_image waits for
        self.blocked = threading.Event()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def for_credentials(self, credentials):
        return self

    def read_image(self, region, image_id):
        self.reads[image_id] += 1
        for chunk in self.inner.read_image(region, image_id):
            for i in range(0, len(chunk), PIECE):
                yield chunk[i : i + PIECE]

    def create_image(self, region, name, data, **kwargs):
        if region == self.region and data is not None:
            if self.fail_after is not None:
                for _ in range(self.fail_after):
                    data.read(PIECE)
                raise BackendUnavailable(f"{region}: connection reset")
            if self.block is not None:
                data.read(PIECE)
                self.blocked.set()
                self.block.wait(30)
        return self.inner.create_image(region, name, data, **kwargs)


@pytest.fixture
def local(tmp_path):
    store = make_store(str(tmp_path / "images"))
    images = build_scenario(store)
    put(store, "RegionC", "foreign", b"z" * 5, owner="someoneelse")
    return store, images


def uploaded_names(plan):
    return {u.image.name for u in plan.uploads}


def check_copies(store, images, region, names):
    by_name = {im.name: im for im in store.list_images(region)}
    for name in names:
        master = next(m for m in images.values() if m.name == name)
        copy = by_name[name]
        assert (copy.size, copy.checksum, copy.os_hash_value) == (
            master.size,
            master.checksum,
            master.os_hash_value,
        )


def test_master_read_once_per_image_for_three_regions(local):
    store, images = local
    wrapped = Wrapped(store)
    sync = engine(wrapped, images)
    report = sync.sync(list(REGIONS))
    assert not report.failed, report.summary()
    uploads = {r.region: uploaded_names(r.plan) for r in report.results}
    # RegionC has none of the scenario's conflicting images: it needs them too.
    assert uploads["RegionA"] == uploads["RegionB"] < uploads["RegionC"]
    assert uploads["RegionA"]
    ids = {im.id for im in images.values() if im.name in uploads["RegionC"]}
    assert dict(wrapped.reads) == dict.fromkeys(ids, 1)
    for region in REGIONS:
        check_copies(store, images, region, uploads[region])
    # AMI fix-ups and the rest happened as before: a second run changes nothing.
    again = engine(store, images).sync(list(REGIONS))
    assert not again.failed
    assert sum(len(r.done) for r in again.results) == 0


def test_failing_region_fails_alone(local):
    store, images = local
    wrapped = Wrapped(store, region="RegionB", fail_after=1)
    report = engine(wrapped, images).sync(list(REGIONS))
    results = {r.region: r for r in report.results}
    assert [r.region for r in report.failed] == ["RegionB"]
    failed = results["RegionB"]
    assert "connection reset" in failed.error
    # obsolete and metadata changes were made before the uploads, and are reported
    assert failed.done and not any(d.action in ("upload", "replace", "rename") for d in failed.done)
    assert f"after {len(failed.done)} change(s)" in report.summary()
    names = uploaded_names(results["RegionA"].plan)
    assert not names & {im.name for im in store.list_images("RegionB")}
    for region in ("RegionA", "RegionC"):
        check_copies(store, images, region, names)
        assert results[region].ok
    assert max(wrapped.reads.values()) == 1


def test_stalled_region_is_dropped_and_others_finish(local):
    store, images = local
    release = threading.Event()
    wrapped = Wrapped(store, region="RegionB", block=release)
    sync = engine(wrapped, images)
    sync.fanout_queue_chunks = 2
    sync.fanout_stall_timeout = 0.3
    started = time.monotonic()
    try:
        report = sync.sync(list(REGIONS))
    finally:
        release.set()
    assert time.monotonic() - started < 20
    assert wrapped.blocked.is_set()
    assert [r.region for r in report.failed] == ["RegionB"]
    assert "dropped from the fan-out" in report.failed[0].error
    results = {r.region: r for r in report.results}
    names = uploaded_names(results["RegionA"].plan)
    for region in ("RegionA", "RegionC"):
        check_copies(store, images, region, names)
    # Released, the stalled writer gives up: no copy lands in RegionB.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(
        t.name.startswith("fanout-") for t in threading.enumerate()
    ):
        time.sleep(0.05)
    assert not names & {im.name for im in store.list_images("RegionB")}


def test_fan_out_source_error_fails_every_destination():
    def source():
        yield b"abc"
        raise BackendUnavailable("master went away")

    def writer(chunks):
        return hashlib.md5(b"".join(chunks), usedforsecurity=False).hexdigest()

    out = fanout.fan_out(source(), [("a", writer), ("b", writer)], queue_chunks=1)
    assert all("master went away" in str(o.error) for o in out.values())


def test_fan_out_copies_and_bounds_a_slow_reader():
    data = [bytes([i]) * 10 for i in range(20)]
    gate = threading.Event()
    discarded = []

    def fast(chunks):
        return b"".join(chunks)

    def slow(chunks):
        gate.wait(10)
        return b"".join(chunks)

    out = fanout.fan_out(
        iter(data),
        [("fast", fast), ("slow", slow)],
        queue_chunks=3,
        stall_timeout=0.2,
        discard=lambda key, result: discarded.append(key),
    )
    gate.set()
    assert out["fast"].ok and out["fast"].result == b"".join(data)
    assert isinstance(out["slow"].error, fanout.StalledError)


def test_dry_run_reads_nothing(local):
    store, images = local
    wrapped = Wrapped(store)
    report = engine(wrapped, images).sync(list(REGIONS), dry_run=True)
    assert not report.failed
    assert not wrapped.reads
    assert any(r.plan.uploads for r in report.results)
    assert all(isinstance(u, P.UploadChange) for r in report.results for u in r.plan.uploads)
