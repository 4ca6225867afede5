"""GlanceSync's engine on any ImageStore: selection, safe condition, plan, apply, report.

Typical use::

    from stowkit.corelib.imagesync import build
    sync = build(conf, store, sync_config_path, {"master.only_tenant_images": "False"})
    for result in sync.status():
        ...
    report = sync.sync(dry_run=True)
"""

from __future__ import annotations

from collections.abc import Mapping

from oslo_config import cfg

from stowkit.corelib.image import ImageStore
from stowkit.corelib.imagesync import config as sync_config
from stowkit.corelib.imagesync.engine import ImageSync, RegionResult, SyncReport

__all__ = ["ImageSync", "RegionResult", "SyncReport", "build", "load_config"]


def load_config(
    conf: cfg.ConfigOpts,
    path: str | None = None,
    overrides: Mapping[str, str] | None = None,
) -> sync_config.SyncConfig:
    """The sync config named by ``path`` or ``[image_sync] config_file``.

    An explicit ``path`` must exist; the default file may be missing, then
    GlanceSync's defaults apply with ``[image_sync] master_region``.
    """
    sync_config.register_opts(conf)
    group = conf[sync_config.GROUP]
    return sync_config.load(
        path or group.config_file,
        overrides,
        master_region=group.master_region,
        must_exist=path is not None,
    )


def build(
    conf: cfg.ConfigOpts,
    store: ImageStore,
    path: str | None = None,
    overrides: Mapping[str, str] | None = None,
) -> ImageSync:
    return ImageSync(load_config(conf, path, overrides), store)
