"""Image sync benchmarks.

1. ``copy``: 20 images of 1 MiB and one of 200 MiB synchronised from RegionOne to
   RegionTwo and RegionThree of the harness Glance (``python3 -m tools.stack start
   keystone glance``), beside the same bytes copied by a plain glanceclient loop
   (``images.data()`` wrapped as ``.read()`` into ``images.upload()``): the limit,
   measured in the same run.  Prints both times and the ratio (target: within 1.3x).
2. ``plan``: planning 10,000 master images against 5 regions on the local store
   (target: under 1 s, wall clock), listing included and excluded.

    python3 bench/imagesync.py [plan] [copy] [--small-images 20] [--big-mib 200]
                               [--plan-images 10000] [--plan-regions 5]
                               [--results FILE] [--strict]

Both run by default.  The figures (bench/figures.py): the two copy ratios
(sequential and ``--parallel`` sync over the plain loop, target <= 1.3x),
planning only (target < 1 s) and, without a target, its CPU time and the
listing + planning time.  A part that could not run (Keystone or Glance not
running, a failed sync) leaves its figures MISSING and exits 1; a part not
asked for is SKIPPED.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import pathlib
import random
import shutil
import sys
import tempfile
import time
import uuid

import figures

from stowkit.corelib import config as core_config
from stowkit.corelib.image import Image
from stowkit.corelib.imagesync import config as sync_config
from stowkit.corelib.imagesync import plan as P
from stowkit.corelib.imagesync.engine import ImageSync
from stowkit.corelib.imagesync.select import MasterImages, images_to_sync, visible_region_images

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


COPY_RATIOS = {
    "stowkit sync": "copy: stowkit sync / plain glanceclient loop",
    "stowkit sync --parallel": "copy: stowkit sync --parallel / plain glanceclient loop",
}


def bench_copy(res: figures.Results, small: int, big_mib: int) -> None:
    from stowkit.plugins.glance.store import GlanceImageStore

    admin = figures.service("keystone")["admin"]
    figures.service("glance")
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
    sizes = [MIB] * small + ([big_mib * MIB] if big_mib else [])
    print(f"creating {len(sizes)} images ({sum(sizes) // MIB} MiB) in RegionOne as {tag}-*")
    targets = ("RegionTwo", "RegionThree")
    total = sum(sizes) * len(targets)
    created: list[tuple[str, str]] = []
    try:
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
        print(f"plain glanceclient loop: {plain:7.2f} s  {total / MIB / plain:7.1f} MiB/s")

        sync_text = (
            "[main]\nmaster_region = RegionOne\n[master]\n"
            f"metadata_condition = image.name.startswith('{tag}-')\n"
        )
        sync_cfg = sync_config.parse(sync_text, source="bench")
        for label, parallel in (("stowkit sync", False), ("stowkit sync --parallel", True)):
            with res.part(label, [COPY_RATIOS[label]]):
                sync = ImageSync(sync_cfg, store)
                t0 = time.perf_counter()
                report = sync.sync(list(targets), parallel=parallel)
                secs = time.perf_counter() - t0
                if report.failed:
                    raise RuntimeError(f"sync failed: {report.summary()}")
                uploads = sum(1 for r in report.results for d in r.done if d.action == "upload")
                if uploads != len(sizes) * len(targets):
                    raise RuntimeError(f"{uploads} uploads, expected {len(sizes) * len(targets)}")
                for region in targets:
                    for im in store.list_images(region):
                        if im.name.startswith(tag):
                            store.delete_image(region, im.id)
                print(
                    f"{label:24s} {secs:7.2f} s  {total / MIB / secs:7.1f} MiB/s"
                    f"  ratio {secs / plain:.2f}x (target <= 1.3x; verifies size, md5, sha512)"
                )
                res.ratio(COPY_RATIOS[label], secs, plain)
    finally:
        for region, image_id in created:
            store.delete_image(region, image_id)
        for region in ("RegionOne", *targets):
            for im in store.list_images(region):
                if im.name.startswith(tag):
                    store.delete_image(region, im.id)
        shutil.rmtree(work, ignore_errors=True)


def plan_figures(n: int, regions: int) -> tuple[str, str, str]:
    what = f"plan {n} images x {regions} regions"
    return (
        f"{what}: planning only (wall)",
        f"{what}: planning only (CPU)",
        f"{what}: listing + planning (wall)",
    )


def bench_plan(res: figures.Results, n: int = 10_000, regions: int = 5) -> None:
    root = tempfile.mkdtemp(prefix="bench-imagesync-plan-")
    try:
        _bench_plan(res, root, n, regions)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _bench_plan(res: figures.Results, root: str, n: int, regions: int) -> None:
    from stowkit.plugins.local.images import LocalImageStore

    rng = random.Random(2)
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
    if not all(r.ok for r in results):
        raise RuntimeError("image status failed: " + "; ".join(str(r) for r in results if not r.ok))
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
    wall, cpu, listing = plan_figures(n, regions)
    res.set(wall, plan_only)
    res.set(cpu, plan_cpu)
    res.set(listing, with_listing)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", metavar="plan|copy", help="default: both")
    parser.add_argument("--small-images", type=int, default=20, help="1 MiB images to copy")
    parser.add_argument("--big-mib", type=int, default=200, help="size of the big image (0: none)")
    parser.add_argument("--plan-images", type=int, default=10_000)
    parser.add_argument("--plan-regions", type=int, default=5)
    figures.add_arguments(parser, "imagesync")
    args = parser.parse_args(argv)
    which = args.parts or ["plan", "copy"]
    if set(which) - {"plan", "copy"}:
        parser.error(f"unknown part {sorted(set(which) - {'plan', 'copy'})[0]!r}")
    res = figures.Results("imagesync")
    wall, cpu, listing = plan_figures(args.plan_images, args.plan_regions)
    res.declare(wall, "s", 1.0, "<")
    res.declare(cpu, "s")
    res.declare(listing, "s")
    for figure in COPY_RATIOS.values():
        res.declare(figure, "x", 1.3, "<=")
    if "plan" in which:
        with res.part("plan", [wall, cpu, listing]):
            bench_plan(res, args.plan_images, args.plan_regions)
    else:
        for figure in (wall, cpu, listing):
            res.skip(figure, "plan not asked for")
    if "copy" in which:
        with res.part("copy", list(COPY_RATIOS.values())):
            bench_copy(res, args.small_images, args.big_mib)
    else:
        for figure in COPY_RATIOS.values():
            res.skip(figure, "copy not asked for")
    return res.finish(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
