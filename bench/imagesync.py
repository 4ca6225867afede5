"""Image sync benchmarks.

1. ``copy``: 20 images of 1 MiB and one of 200 MiB synchronised from RegionOne to
   RegionTwo and RegionThree of the harness Glance (``python3 -m tools.stack start
   keystone glance``), beside the same bytes copied by a plain glanceclient loop
   (``images.data()`` wrapped as ``.read()`` into ``images.upload()``): the limit.
   Prints both times and the ratio (target: within 1.3x).
2. ``plan``: planning 10,000 master images against 5 regions on the local store
   (target: under 1 s), listing included and excluded.

    python3 bench/imagesync.py [copy] [plan]
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import random
import sys
import tempfile
import time
import uuid

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stowkit.corelib import config as core_config  # noqa: E402
from stowkit.corelib import imagesync  # noqa: E402
from stowkit.corelib.image import Image  # noqa: E402
from stowkit.corelib.imagesync import config as sync_config  # noqa: E402
from stowkit.corelib.imagesync import plan as P  # noqa: E402
from stowkit.corelib.imagesync.engine import ImageSync  # noqa: E402
from stowkit.corelib.imagesync.select import MasterImages, images_to_sync, visible_region_images  # noqa: E402

MIB = 1 << 20


class IterReader:
    """The plain way: an iterator made readable, nothing else."""

    def __init__(self, it):
        self.it, self.buf = iter(it), b""

    def read(self, n=-1):
        while not self.buf:
            try:
                self.buf = next(self.it)
            except StopIteration:
                return b""
        if n < 0 or n >= len(self.buf):
            out, self.buf = self.buf, b""
        else:
            out, self.buf = self.buf[:n], self.buf[n:]
        return out


def bench_copy() -> None:
    from stowkit.plugins.glance.store import GlanceImageStore

    state = json.loads((REPO / ".stack" / "state.json").read_text())["services"]
    admin = state["keystone"]["admin"]
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-imagesync-"))
    conf_file = work / "stowkit.conf"
    conf_file.write_text(
        "[image]\nbackend = glance\n[image_glance]\n"
        + "".join(
            f"{k} = {admin[k]}\n" for k in ("auth_url", "username", "password", "project_name")
        )
    )
    conf = core_config.load_conf([str(conf_file)])
    store = GlanceImageStore(conf, "image_glance")
    tag = f"bench-{uuid.uuid4().hex[:8]}"
    sizes = [MIB] * 20 + [200 * MIB]
    print(f"creating {len(sizes)} images ({sum(sizes) // MIB} MiB) in RegionOne as {tag}-*")
    masters = []
    rng = random.Random(1)
    for i, size in enumerate(sizes):
        data = rng.randbytes(size)
        masters.append(
            store.create_image(
                "RegionOne", f"{tag}-{i:02d}", io.BytesIO(data), visibility="public", size=size
            )
        )
        del data
    targets = ("RegionTwo", "RegionThree")
    total = sum(sizes) * len(targets)
    created: list[tuple[str, str]] = []
    try:
        # the limit: a plain glanceclient loop, smallest first, region after region
        t0 = time.perf_counter()
        for region in targets:
            dest = store.client(region)
            src = store.client("RegionOne")
            for m in sorted(masters, key=lambda im: im.size):
                new = dest.images.create(
                    name=m.name, visibility="public", disk_format="raw", container_format="bare"
                )
                dest.images.upload(new["id"], IterReader(src.images.data(m.id)))
                created.append((region, new["id"]))
        plain = time.perf_counter() - t0
        for region, image_id in created:
            store.delete_image(region, image_id)
        created.clear()

        sync_text = (
            "[main]\nmaster_region = RegionOne\n[master]\n"
            f"metadata_condition = image.name.startswith('{tag}-')\n"
        )
        sync_cfg = sync_config.parse(sync_text, source="bench")
        results = {}
        for label, parallel in (("stowkit sync", False), ("stowkit sync --parallel", True)):
            sync = ImageSync(sync_cfg, store)
            t0 = time.perf_counter()
            report = sync.sync(list(targets), parallel=parallel)
            results[label] = time.perf_counter() - t0
            assert not report.failed, report.summary()
            uploads = sum(1 for r in report.results for d in r.done if d.action == "upload")
            assert uploads == len(sizes) * len(targets), uploads
            for region in targets:
                for im in store.list_images(region):
                    if im.name.startswith(tag):
                        store.delete_image(region, im.id)
        print(f"plain glanceclient loop: {plain:7.2f} s  {total / MIB / plain:7.1f} MiB/s")
        for label, secs in results.items():
            print(
                f"{label:24s} {secs:7.2f} s  {total / MIB / secs:7.1f} MiB/s"
                f"  ratio {secs / plain:.2f}x (target <= 1.3x; verifies size, md5, sha512)"
            )
    finally:
        for region, image_id in created:
            store.delete_image(region, image_id)
        for region in ("RegionOne", *targets):
            for im in store.list_images(region):
                if im.name.startswith(tag):
                    store.delete_image(region, im.id)


def bench_plan(n: int = 10_000, regions: int = 5) -> None:
    from stowkit.plugins.local.images import LocalImageStore

    rng = random.Random(2)
    root = tempfile.mkdtemp(prefix="bench-imagesync-plan-")
    conf = core_config.load_conf()
    conf.register_opts(LocalImageStore.options, group="image_local")
    conf.set_override("path", root, "image_local")
    store = LocalImageStore(conf, "image_local")

    def record(im: Image) -> dict:
        return store._to_record(im, False)

    master = []
    for i in range(n):
        digest = hashlib.md5(str(i).encode(), usedforsecurity=False).hexdigest()
        master.append(
            Image(
                id=str(uuid.UUID(int=rng.getrandbits(128))),
                name=f"image-{i:05d}",
                region="Master",
                owner="local",
                size=rng.randrange(1, 10 * MIB),
                checksum=digest,
                visibility="public" if i % 10 else "private",
                properties={"nid": str(i % 50), "type": "base" if i % 3 else "app"},
            )
        )
    os.makedirs(f"{root}/Master")
    store._write_index(f"{root}/Master", {im.id: record(im) for im in master})
    for r in range(regions):
        index = {}
        for im in master:
            roll = rng.random()
            if roll < 0.1:
                continue  # missing: pending_upload
            copy = im.replace(id=str(uuid.uuid4()), region=f"R{r}")
            if roll < 0.2:
                copy = copy.replace(checksum="0" * 32)  # conflict
            elif roll < 0.3:
                copy = copy.replace(properties={"nid": "x"})  # metadata
            index[copy.id] = record(copy)
        os.makedirs(f"{root}/R{r}")
        store._write_index(f"{root}/R{r}", index)
    sync_cfg = sync_config.parse(
        "[main]\nmaster_region = Master\n[master]\nmetadata_set = nid, type\nrename = any\n",
        source="bench",
    )

    t0, c0 = time.perf_counter(), time.process_time()
    sync = ImageSync(sync_cfg, store)
    results = sync.status()
    with_listing, listing_cpu = time.perf_counter() - t0, time.process_time() - c0
    assert all(r.ok for r in results)
    counts: dict[str, int] = {}
    for r in results:
        for e in r.plan.entries:
            counts[e.status] = counts.get(e.status, 0) + 1

    lists = {f"R{r}": store.list_images(f"R{r}") for r in range(regions)}
    master_list = store.list_images("Master")
    target = sync_cfg.master
    t0, c0 = time.perf_counter(), time.process_time()
    mi = MasterImages(master_list, "local")
    to_sync = images_to_sync(mi, target, [])  # once per target, as the engine does
    for region, images in lists.items():
        visible = visible_region_images(images, "local", True)
        P.plan_region(mi, visible, "local", target, region, region, to_sync=to_sync)
    plan_only, plan_cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"plan {n} images x {regions} regions (local store):")
    # CPU time too: on a shared machine the wall clock also measures the neighbours.
    print(
        f"  listing + planning (image status): {with_listing:.3f} s wall, {listing_cpu:.3f} s CPU"
    )
    print(
        f"  planning only:                     {plan_only:.3f} s wall, {plan_cpu:.3f} s CPU"
        "  (target < 1 s)"
    )
    print(f"  load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"  statuses: {dict(sorted(counts.items()))}")
    _ = imagesync  # the public entry point; used by the CLI


def main(argv: list[str]) -> int:
    which = argv or ["plan", "copy"]
    if "plan" in which:
        bench_plan()
    if "copy" in which:
        bench_copy()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
