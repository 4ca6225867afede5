"""Storage operations for small OpenStack and Docker clusters: the public API.

Open the backends a configuration names, then use them and the engines
below.  Opening reads the configuration only; each backend is loaded the
first time it is used::

    import stowkit

    with stowkit.open(["/etc/stowkit/stowkit.conf"]) as kit:
        kit.volumes     # VolumeDriver: BTRFS volumes, snapshots, send/receive
        kit.images      # ImageStore: images of one or more regions
        kit.blocks      # BlockStore: block devices made of objects
        kit.catalog     # Catalog: the backup catalog's documents

The four jobs, and the names this package gives them:

- Volumes: ``VolumeDriver``, ``Volume``, ``Snapshot``, ``SendResult``; a
  volume is sent with ``kit.volumes.send_snapshot`` / ``replicate`` and
  fetched back with ``pull`` (``PullResult``); ``plan_purge`` and
  ``parse_pattern`` are the retention rules ``VolumeDriver.purge`` applies;
  ``run_volume_job`` runs a ``VolumeJob`` (a ``VolumeAction`` on a volume)
  as the scheduler and the agent do.
- Images: ``ImageStore``, ``Image``, ``find_image``; GlanceSync's engine is
  ``image_sync`` (``ImageSync``: ``status()`` plans, ``sync()`` applies,
  giving a ``SyncReport``).
- Block devices: ``BlockStore``, ``BlockDevice``, ``Lease``; a device is
  copied from and to a file with ``upload_device`` and ``download_device``
  (``CopyStats``).
- The catalog: ``Catalog``, ``Stored``, ``KINDS``, ``VersionConflict``; a
  catalog service is reached with ``connect_catalog`` (``CatalogClient``:
  jobs, sessions, backup documents, as ``stowkit agent`` uses it).

Every error stowkit raises on purpose is a ``StowkitError`` (the hierarchy of
``stowkit.corelib.errors``, re-exported here).  The names in ``__all__`` are
public and stable: they keep their meaning and signature within a major
version.  Everything under ``stowkit.corelib``, ``stowkit.plugins`` and
``stowkit.cli`` may change between releases (the backend interfaces excepted:
they are re-exported here).

Importing stowkit is cheap: each name is imported from its module the first
time it is used.
"""

from __future__ import annotations

import importlib

if __name__ != "stowkit":
    # This folder is the package ``stowkit`` (setup.py); from a checkout it can also be
    # reached as stowkit.corelib._stowkit, which would be a second, separate copy.
    raise ImportError(f"import stowkit, not {__name__}")

# Not typing.TYPE_CHECKING: importing typing would double the cost of ``import stowkit``;
# type checkers know this spelling too.
TYPE_CHECKING = False
if TYPE_CHECKING:  # what type checkers read; _EXPORTS is what runs (a test keeps them equal)
    from typing import Any

    from stowkit.corelib.backends import Backends as Backends
    from stowkit.corelib.backends import open_backends as open
    from stowkit.corelib.blockcopy import CopyStats as CopyStats
    from stowkit.corelib.blockcopy import download as download_device
    from stowkit.corelib.blockcopy import upload as upload_device
    from stowkit.corelib.blocklease import Lease as Lease
    from stowkit.corelib.blocklock import DeviceLocked as DeviceLocked
    from stowkit.corelib.blocklock import LeaseLost as LeaseLost
    from stowkit.corelib.blockstore import BlockDevice as BlockDevice
    from stowkit.corelib.blockstore import BlockStore as BlockStore
    from stowkit.corelib.catalog import KINDS as KINDS
    from stowkit.corelib.catalog import Catalog as Catalog
    from stowkit.corelib.catalog import Stored as Stored
    from stowkit.corelib.catalog import VersionConflict as VersionConflict
    from stowkit.corelib.catalogclient import CatalogClient as CatalogClient
    from stowkit.corelib.catalogclient import connect as connect_catalog
    from stowkit.corelib.driver import Driver as Driver
    from stowkit.corelib.errors import AlreadyExists as AlreadyExists
    from stowkit.corelib.errors import BackendUnavailable as BackendUnavailable
    from stowkit.corelib.errors import ConfigError as ConfigError
    from stowkit.corelib.errors import Conflict as Conflict
    from stowkit.corelib.errors import Forbidden as Forbidden
    from stowkit.corelib.errors import InvalidArgument as InvalidArgument
    from stowkit.corelib.errors import InvalidName as InvalidName
    from stowkit.corelib.errors import Locked as Locked
    from stowkit.corelib.errors import NotFound as NotFound
    from stowkit.corelib.errors import PreconditionFailed as PreconditionFailed
    from stowkit.corelib.errors import StowkitError as StowkitError
    from stowkit.corelib.image import Image as Image
    from stowkit.corelib.image import ImageStore as ImageStore
    from stowkit.corelib.image import find_image as find_image
    from stowkit.corelib.imagesync import ImageSync as ImageSync
    from stowkit.corelib.imagesync import RegionResult as RegionResult
    from stowkit.corelib.imagesync import SyncReport as SyncReport
    from stowkit.corelib.imagesync import build as image_sync
    from stowkit.corelib.pull import PullResult as PullResult
    from stowkit.corelib.pull import pull as pull
    from stowkit.corelib.retention import parse_pattern as parse_pattern
    from stowkit.corelib.retention import plan_purge as plan_purge
    from stowkit.corelib.volume import SendResult as SendResult
    from stowkit.corelib.volume import Snapshot as Snapshot
    from stowkit.corelib.volume import Volume as Volume
    from stowkit.corelib.volume import VolumeDriver as VolumeDriver
    from stowkit.corelib.volumejobs import VolumeAction as VolumeAction
    from stowkit.corelib.volumejobs import VolumeJob as VolumeJob
    from stowkit.corelib.volumejobs import run as run_volume_job

#: public name -> (module, name there)
_EXPORTS: dict[str, tuple[str, str]] = {
    # opening the configured backends
    "open": ("stowkit.corelib.backends", "open_backends"),
    "Backends": ("stowkit.corelib.backends", "Backends"),
    "Driver": ("stowkit.corelib.driver", "Driver"),
    # volumes
    "VolumeDriver": ("stowkit.corelib.volume", "VolumeDriver"),
    "Volume": ("stowkit.corelib.volume", "Volume"),
    "Snapshot": ("stowkit.corelib.volume", "Snapshot"),
    "SendResult": ("stowkit.corelib.volume", "SendResult"),
    "pull": ("stowkit.corelib.pull", "pull"),
    "PullResult": ("stowkit.corelib.pull", "PullResult"),
    "plan_purge": ("stowkit.corelib.retention", "plan_purge"),
    "VolumeAction": ("stowkit.corelib.volumejobs", "VolumeAction"),
    "VolumeJob": ("stowkit.corelib.volumejobs", "VolumeJob"),
    "run_volume_job": ("stowkit.corelib.volumejobs", "run"),
    "parse_pattern": ("stowkit.corelib.retention", "parse_pattern"),
    # images
    "ImageStore": ("stowkit.corelib.image", "ImageStore"),
    "Image": ("stowkit.corelib.image", "Image"),
    "find_image": ("stowkit.corelib.image", "find_image"),
    "image_sync": ("stowkit.corelib.imagesync", "build"),
    "ImageSync": ("stowkit.corelib.imagesync", "ImageSync"),
    "RegionResult": ("stowkit.corelib.imagesync", "RegionResult"),
    "SyncReport": ("stowkit.corelib.imagesync", "SyncReport"),
    # block devices
    "BlockStore": ("stowkit.corelib.blockstore", "BlockStore"),
    "BlockDevice": ("stowkit.corelib.blockstore", "BlockDevice"),
    "Lease": ("stowkit.corelib.blocklease", "Lease"),
    "upload_device": ("stowkit.corelib.blockcopy", "upload"),
    "download_device": ("stowkit.corelib.blockcopy", "download"),
    "CopyStats": ("stowkit.corelib.blockcopy", "CopyStats"),
    # the catalog
    "Catalog": ("stowkit.corelib.catalog", "Catalog"),
    "Stored": ("stowkit.corelib.catalog", "Stored"),
    "KINDS": ("stowkit.corelib.catalog", "KINDS"),
    "VersionConflict": ("stowkit.corelib.catalog", "VersionConflict"),
    "CatalogClient": ("stowkit.corelib.catalogclient", "CatalogClient"),
    "connect_catalog": ("stowkit.corelib.catalogclient", "connect"),
    # errors
    "StowkitError": ("stowkit.corelib.errors", "StowkitError"),
    "InvalidArgument": ("stowkit.corelib.errors", "InvalidArgument"),
    "InvalidName": ("stowkit.corelib.errors", "InvalidName"),
    "NotFound": ("stowkit.corelib.errors", "NotFound"),
    "AlreadyExists": ("stowkit.corelib.errors", "AlreadyExists"),
    "Conflict": ("stowkit.corelib.errors", "Conflict"),
    "Locked": ("stowkit.corelib.errors", "Locked"),
    "BackendUnavailable": ("stowkit.corelib.errors", "BackendUnavailable"),
    "ConfigError": ("stowkit.corelib.errors", "ConfigError"),
    "Forbidden": ("stowkit.corelib.errors", "Forbidden"),
    "PreconditionFailed": ("stowkit.corelib.errors", "PreconditionFailed"),
    "DeviceLocked": ("stowkit.corelib.blocklock", "DeviceLocked"),
    "LeaseLost": ("stowkit.corelib.blocklock", "LeaseLost"),
}

# A literal, for type checkers and linters; the same names as _EXPORTS (a test checks).
__all__ = [
    "AlreadyExists",
    "BackendUnavailable",
    "Backends",
    "BlockDevice",
    "BlockStore",
    "Catalog",
    "CatalogClient",
    "ConfigError",
    "Conflict",
    "CopyStats",
    "DeviceLocked",
    "Driver",
    "Forbidden",
    "Image",
    "ImageStore",
    "ImageSync",
    "InvalidArgument",
    "InvalidName",
    "KINDS",
    "Lease",
    "LeaseLost",
    "Locked",
    "NotFound",
    "PreconditionFailed",
    "PullResult",
    "RegionResult",
    "SendResult",
    "Snapshot",
    "Stored",
    "StowkitError",
    "SyncReport",
    "VersionConflict",
    "Volume",
    "VolumeAction",
    "VolumeDriver",
    "VolumeJob",
    "connect_catalog",
    "download_device",
    "find_image",
    "image_sync",
    "open",
    "parse_pattern",
    "plan_purge",
    "pull",
    "run_volume_job",
    "upload_device",
]


def __getattr__(name: str) -> Any:
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'stowkit' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
