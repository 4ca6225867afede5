"""The GlanceSync engine: regions per target, status, sync and backups.

``ImageSync(config, store)`` takes the parsed GlanceSync configuration and
the configured :class:`stowkit.corelib.image.ImageStore` (the master target's); other
targets get their own store from ``store.for_credentials(...)``.  Region
names are GlanceSync's: ``REGION`` for the master target, ``TARGET:REGION``
for the others, ``TARGET:`` for every region of a target.

One region's failure never stops the others: each region's work is wrapped
and its error kept in its :class:`RegionResult`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import threading
from collections.abc import Callable, Sequence

from stowkit.corelib.errors import NotFound, StowkitError
from stowkit.corelib.image import Image, ImageCapability, ImageStore
from stowkit.corelib.imagesync import apply as A
from stowkit.corelib.imagesync import fanout, report
from stowkit.corelib.imagesync import plan as P
from stowkit.corelib.imagesync.config import (
    MASTER,
    SyncConfig,
    full_region_name,
    order_regions,
    region_parts,
)
from stowkit.corelib.imagesync.select import MasterImages, images_to_sync, visible_region_images
from stowkit.corelib.names import check_name

LOG = logging.getLogger("stowkit.imagesync")


@dataclasses.dataclass
class RegionResult:
    region: str
    plan: P.RegionPlan | None = None
    done: list[A.Done] = dataclasses.field(default_factory=list)
    error: str | None = None
    error_type: type[StowkitError] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclasses.dataclass
class SyncReport:
    results: list[RegionResult]
    dry_run: bool = False

    @property
    def failed(self) -> list[RegionResult]:
        return [r for r in self.results if not r.ok]

    def summary(self) -> str:
        failed = self.failed
        verb = "to make (dry run)" if self.dry_run else "made"
        changes = sum(len(r.done) for r in self.results)
        text = f"{len(self.results)} region(s), {changes} change(s) {verb}"
        if failed:
            names = "; ".join(
                f"{r.region}: {r.error}" + (f" (after {len(r.done)} change(s))" if r.done else "")
                for r in failed
            )
            text += f"; FAILED in {len(failed)}: {names}"
        return text


class ImageSync:
    def __init__(self, config: SyncConfig, store: ImageStore) -> None:
        self.config = config
        self.base_store = store
        self._stores: dict[str, ImageStore] = {}
        self._lock = threading.Lock()
        self._master: MasterImages | None = None
        self._tenants: dict[str, str | None] = {}
        self._to_sync: dict[str, dict[str, Image]] = {}
        #: target -> error, for targets whose regions could not be listed by resolve()
        self.unreachable: dict[str, StowkitError] = {}
        #: the fan-out of uploads: chunks queued per region, and how long (seconds)
        #: a region may take none before it is dropped (and fails)
        self.fanout_queue_chunks = fanout.QUEUE_CHUNKS
        self.fanout_stall_timeout = fanout.STALL_TIMEOUT

    # -- targets and regions -------------------------------------------------

    def store(self, target_name: str) -> ImageStore:
        with self._lock:
            if target_name not in self._stores:
                target = self.config.target(target_name)
                creds = target.credentials
                if target_name == MASTER and creds is None:
                    self._stores[target_name] = self.base_store
                else:
                    self._stores[target_name] = self.base_store.for_credentials(creds)
            return self._stores[target_name]

    def tenant_id(self, target_name: str) -> str | None:
        if target_name not in self._tenants:
            target = self.config.target(target_name)
            self._tenants[target_name] = target.tenant_id or self.store(target_name).tenant_id()
        return self._tenants[target_name]

    def _store_regions(self, target_name: str) -> list[str]:
        """The store-side names of a target's regions (ignore_regions not applied)."""
        target = self.config.target(target_name)
        store = self.store(target_name)
        available = list(store.regions())
        if target.regions is not None:
            missing = [r for r in target.regions if r not in available]
            if missing:
                raise NotFound(f"target {target_name}: unknown region {missing[0]!r}")
            return list(target.regions)
        # Regions another target claims explicitly on the same store are theirs,
        # and the master region is the master target's (on the local store every
        # target sees the same regions).
        claimed: set[str] = set()
        if target_name != MASTER and store is self.store(MASTER):
            claimed.add(self.config.master_region)
        for other in self.config.targets.values():
            if other.name != target_name and other.regions and self.store(other.name) is store:
                claimed.update(other.regions)
        return [r for r in available if r not in claimed]

    def target_regions(self, target_name: str, *, omit_master: bool = True) -> list[str]:
        """Full names of a target's regions, less ignore_regions (and the master region)."""
        target = self.config.target(target_name)
        names = []
        for region in self._store_regions(target_name):
            if target_name == MASTER and omit_master and region == self.config.master_region:
                continue
            if region in target.ignore_regions:
                continue
            names.append(full_region_name(target_name, region))
        return order_regions(names, self.config.preferable_order)

    def all_regions(self) -> dict[str, list[str]]:
        """target -> its regions (full names), the master region excluded."""
        return {t: self.target_regions(t) for t in sorted(self.config.targets, key=_master_first)}

    def resolve(self, names: Sequence[str] = ()) -> list[str]:
        """Expand ``TARGET:`` and check every name; no names means every target's regions."""
        if not names:
            # Every target; one whose Keystone fails is reported, not fatal
            # (see :attr:`unreachable`), so the other targets still sync.
            out: list[str] = []
            self.unreachable = {}
            for target in sorted(self.config.targets, key=_master_first):
                try:
                    out.extend(self.target_regions(target))
                except StowkitError as exc:
                    if target == MASTER:
                        raise
                    LOG.error("target %s: %s", target, exc)
                    self.unreachable[target] = exc
            return out
        result: list[str] = []
        for name in names:
            target_name, region = region_parts(name)
            self.config.target(target_name)
            if not region:
                result.extend(self.target_regions(target_name))
                continue
            check_name(region, "region name")
            if region not in self._store_regions(target_name):
                raise NotFound(f"unknown region {name!r}")
            result.append(full_region_name(target_name, region))
        return list(dict.fromkeys(result))

    # -- images ----------------------------------------------------------------

    def master_images(self) -> MasterImages:
        if self._master is None:
            region = self.config.master_region
            if region not in self.store(MASTER).regions():
                raise NotFound(f"master region {region!r} not found in target master")
            images = self.store(MASTER).list_images(
                region, timeout=self.config.master.list_images_timeout
            )
            self._master = MasterImages(images, self.tenant_id(MASTER))
            for warning in self._master.warnings:
                LOG.warning("%s: %s", region, warning)
        return self._master

    def is_master_region(self, region: str) -> bool:
        return region_parts(region) == (MASTER, self.config.master_region)

    def _target_to_sync(self, target_name: str) -> dict[str, Image]:
        master = self.master_images()
        with self._lock:
            to_sync = self._to_sync.get(target_name)
            if to_sync is None:
                warnings: list[str] = []
                target = self.config.target(target_name)
                to_sync = self._to_sync[target_name] = images_to_sync(master, target, warnings)
                for warning in warnings:
                    LOG.warning("%s", warning)
        return to_sync

    def plan(self, region: str, *, with_obsolete: bool = True) -> P.RegionPlan:
        target_name, store_region = region_parts(region)
        target = self.config.target(target_name)
        master = self.master_images()
        if self.is_master_region(region):
            # GlanceSync reports the master region like any other: every image
            # to sync is there by definition, so each is ok and nothing changes.
            return P.master_region_plan(region, target, self._target_to_sync(MASTER))
        tenant = self.tenant_id(target_name)
        images = self.store(target_name).list_images(
            store_region, timeout=target.list_images_timeout
        )
        images = visible_region_images(images, tenant, target.only_tenant_images)
        to_sync = self._target_to_sync(target_name)
        result = P.plan_region(
            master,
            images,
            tenant,
            target,
            region,
            store_region,
            with_obsolete=with_obsolete,
            to_sync=to_sync,
        )
        for warning in result.warnings:
            LOG.warning("%s", warning)
        return result

    def status(self, regions: Sequence[str] = ()) -> list[RegionResult]:
        """Each region's plan (GlanceSync's status ignores obsolete images, so do we)."""
        names = self.resolve(regions)
        self.master_images()
        results = [
            self._guarded(name, lambda n: RegionResult(n, self.plan(n, with_obsolete=False)))
            for name in names
        ]
        return results + self._unreachable_results()

    def sync(
        self,
        regions: Sequence[str] = (),
        *,
        dry_run: bool = False,
        parallel: bool = False,
        progress: Callable[[str, A.Done], None] | None = None,
        before_apply: Callable[[str, P.RegionPlan], None] | None = None,
        observer: Callable[[str, Image], object] | None = None,
    ) -> SyncReport:
        """Synchronise ``regions`` (default: all) from the master region."""
        names = self.resolve(regions)
        self.master_images()  # a master that cannot be read stops everything, once

        def start(name: str) -> RegionResult:
            plan = self.plan(name)
            if before_apply:
                before_apply(name, plan)
            target_name, _ = region_parts(name)
            run = A.RegionApply(
                plan,
                self.store(target_name),
                dry_run=dry_run,
                owner=self.upload_owner(target_name),
                progress=progress,
                observer=(lambda image: observer(name, image)) if observer else None,
            )
            try:
                run.start()
                if dry_run:
                    for upload in plan.uploads:
                        run.uploaded(upload, None)
                    run.finish()
            except Exception as exc:
                # What was changed before the failure is reported with it.
                return self._failed_run(name, run, exc)
            runs[name] = run
            return RegionResult(name, plan, run.done)

        runs: dict[str, A.RegionApply] = {}
        results = self._each(names, start, parallel)
        if not dry_run and runs:
            # One read of each master image, fanned out to every region that needs it.
            failures = A.apply_uploads(
                {n: runs[n] for n in names if n in runs},
                self.store(MASTER),
                self.config.master_region,
                images_dir=self.config.images_dir,
                queue_chunks=self.fanout_queue_chunks,
                stall_timeout=self.fanout_stall_timeout,
            )

            def finish(name: str) -> RegionResult:
                run = runs[name]
                try:
                    if name in failures:
                        raise failures[name]
                    run.finish()
                except Exception as exc:
                    return self._failed_run(name, run, exc)
                return RegionResult(name, run.plan, run.done)

            finished = dict(zip(runs, self._each(list(runs), finish, parallel), strict=True))
            results = [finished.get(r.region, r) for r in results]
        return SyncReport(results + self._unreachable_results(), dry_run)

    def _each(
        self, names: list[str], func: Callable[[str], RegionResult], parallel: bool
    ) -> list[RegionResult]:
        """``func`` per region, in threads (up to ``max_children``) with ``parallel``."""
        workers = 1
        if parallel and len(names) > 1:
            workers = self.config.max_children if self.config.max_children > 1 else len(names)
            workers = min(workers, len(names))
        if workers == 1:
            return [self._guarded(n, func) for n in names]
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            return list(pool.map(lambda n: self._guarded(n, func), names))

    def _failed_run(self, name: str, run: A.RegionApply, exc: Exception) -> RegionResult:
        failed = self._failure(name, exc)
        failed.plan, failed.done = run.plan, run.done
        return failed

    def _unreachable_results(self) -> list[RegionResult]:
        return [
            RegionResult(f"{target}:", error=str(exc), error_type=type(exc))
            for target, exc in self.unreachable.items()
        ]

    @classmethod
    def _guarded(cls, name: str, func: Callable[[str], RegionResult]) -> RegionResult:
        try:
            return func(name)
        except Exception as exc:
            return cls._failure(name, exc)

    @staticmethod
    def _failure(name: str, exc: Exception) -> RegionResult:
        if isinstance(exc, StowkitError):
            LOG.error("%s: %s", name, exc)
            return RegionResult(name, error=str(exc), error_type=type(exc))
        LOG.error("%s: unexpected error", name, exc_info=exc)
        return RegionResult(name, error=f"{type(exc).__name__}: {exc}", error_type=StowkitError)

    def upload_owner(self, target_name: str) -> str | None:
        """The owner to give copies: the target's tenant, when the store would not.

        The local store owns what it creates as ``[image_local] tenant_id``
        whatever the target; a target's ``tenant_id`` differs, and copies
        must be its own or they stay invisible (and pending) to the target.
        """
        tenant = self.tenant_id(target_name)
        store = self.store(target_name)
        if tenant and tenant != store.tenant_id() and store.supports(ImageCapability.SET_OWNER):
            return tenant
        return None

    def backup(
        self, directory: str, regions: Sequence[str] = (), *, include_master: bool = True
    ) -> list[tuple[str, str | None, str | None]]:
        """``backup_REGION.csv`` per region into ``directory``; (region, path, error) rows."""
        os.makedirs(directory, exist_ok=True)
        names = self.resolve(regions)
        if include_master:
            # GlanceSync's backup always holds the master region, whatever is named.
            names = list(dict.fromkeys([self.config.master_region, *names]))
        out: list[tuple[str, str | None, str | None]] = []
        for name in names:
            target_name, store_region = region_parts(name)
            path = os.path.join(directory, report.backup_file_name(name))
            try:
                images: Sequence[Image] = self.store(target_name).list_images(
                    store_region, timeout=self.config.target(target_name).list_images_timeout
                )
                report.write_backup(path, images, name)
                out.append((name, path, None))
            except StowkitError as exc:
                out.append((name, None, str(exc)))
        return out


def _master_first(name: str) -> tuple[bool, str]:
    return (name != MASTER, name)
