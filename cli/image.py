"""``stowkit image ...``: images by hand in any region, and GlanceSync's sync, status, backup.

Regions are named as GlanceSync names them: ``REGION`` in the master target,
``TARGET:REGION`` in another target, ``TARGET:`` for all of a target's regions.
The sync configuration is GlanceSync's own file (``--sync-config``, default
``[image_sync] config_file``), with ``--config section.key=value`` overrides.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from stowkit.cli.common import Bytes, Command, Lister, ServeCommand, ShowOne
from stowkit.cli.progress import ByteMeter, SyncProgress
from stowkit.corelib import imagesync
from stowkit.corelib.errors import EXIT_CODES, InvalidArgument, StowkitError
from stowkit.corelib.image import Image, ImageCapability, find_image
from stowkit.corelib.imagesync import config as sync_config
from stowkit.corelib.imagesync import report as sync_report
from stowkit.corelib.imagesync.engine import ImageSync, SyncReport

LOG = logging.getLogger("stowkit.imagesync")

IMAGE_COLUMNS = ("id", "name", "region", "status", "visibility", "size", "checksum", "owner")


class _MeteredFile:
    """A ``.read()`` object feeding a ByteMeter (``image create``)."""

    def __init__(self, fh: Any, meter: ByteMeter) -> None:
        self.fh, self.meter = fh, meter

    def read(self, size: int = -1) -> bytes:
        data = self.fh.read(size)
        self.meter.update(data)
        return data


def add_progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Show per-image byte progress on stderr (default: when stderr is a terminal).",
    )


def progress_enabled(app: Any, parsed_args: argparse.Namespace) -> bool:
    if parsed_args.progress is not None:
        return parsed_args.progress
    isatty = getattr(app.stderr, "isatty", None)
    return bool(isatty and isatty())


def add_sync_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sync-config",
        metavar="FILE",
        help="GlanceSync configuration file (default: [image_sync] config_file).",
    )
    parser.add_argument(
        "--config",
        metavar="SECTION.KEY=VALUE",
        action="append",
        default=[],
        help="Override one option of the sync configuration (repeatable; KEY=VALUE is [DEFAULT]).",
    )


def build_sync(app: Any, parsed_args: argparse.Namespace) -> ImageSync:
    # The app parser has allow_abbrev=False: --config always reaches the command.
    overrides = sync_config.parse_overrides(parsed_args.config)
    return imagesync.build(app.conf, app.driver("image"), parsed_args.sync_config, overrides)


def properties(pairs: list[str]) -> dict[str, str]:
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidArgument(f"invalid --property {pair!r}: use KEY=VALUE")
        result[key.strip()] = value
    return result


def _image_value(image: Image, column: str) -> Any:
    value = getattr(image, column)
    return Bytes(value) if column == "size" else value


def image_row(image: Image) -> tuple[Any, ...]:
    return tuple(_image_value(image, c) for c in IMAGE_COLUMNS)


class _RegionCommand:
    """Hand work: ``--region R`` in the image backend, or ``TARGET:R`` through the sync config."""

    app: Any

    def add_region(self, parser: argparse.ArgumentParser, *, sync: bool = True) -> None:
        parser.add_argument("--region", required=True, help="REGION or TARGET:REGION.")
        if sync:
            add_sync_options(parser)

    def store_and_region(self, parsed_args: argparse.Namespace) -> tuple[Any, str]:
        target, region = sync_config.region_parts(parsed_args.region)
        if target == sync_config.MASTER and ":" not in parsed_args.region:
            return self.app.driver("image"), region
        sync = build_sync(self.app, parsed_args)
        sync.config.target(target)
        return sync.store(target), region


class CreateImage(_RegionCommand, ShowOne):
    """Upload FILE as a new image in a region."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("file", help="The image's bytes ('-' for stdin).")
        parser.add_argument("--name", required=True)
        self.add_region(parser)
        vis = parser.add_mutually_exclusive_group()
        vis.add_argument("--public", action="store_true", help="Visibility public.")
        vis.add_argument(
            "--visibility", choices=("public", "private", "shared", "community"), default=None
        )
        parser.add_argument("--property", metavar="KEY=VALUE", action="append", default=[])
        parser.add_argument("--owner", help="Project owning the image (admin only on Glance).")
        parser.add_argument("--disk-format", default="raw")
        parser.add_argument("--container-format", default="bare")
        parser.add_argument("--kernel-id")
        parser.add_argument("--ramdisk-id")
        add_progress_option(parser)
        return parser

    def take_action(self, parsed_args):
        props = properties(parsed_args.property)
        store, region = self.store_and_region(parsed_args)
        visibility = "public" if parsed_args.public else parsed_args.visibility or "private"
        if parsed_args.owner and not store.supports(ImageCapability.SET_OWNER):
            raise InvalidArgument("this image backend cannot set an owner")
        try:
            fh = sys.stdin.buffer if parsed_args.file == "-" else open(parsed_args.file, "rb")
        except OSError as exc:
            raise InvalidArgument(f"cannot read {parsed_args.file}: {exc.strerror}") from None
        with fh:
            size = None if parsed_args.file == "-" else os.fstat(fh.fileno()).st_size
            meter = ByteMeter(
                f"{region}: {parsed_args.name}",
                size,
                self.app.stderr,
                progress_enabled(self.app, parsed_args),
            )
            image = store.create_image(
                region,
                parsed_args.name,
                _MeteredFile(fh, meter) if meter.enabled else fh,
                visibility=visibility,
                properties=props,
                owner=parsed_args.owner,
                disk_format=parsed_args.disk_format,
                container_format=parsed_args.container_format,
                kernel_id=parsed_args.kernel_id,
                ramdisk_id=parsed_args.ramdisk_id,
                size=size,
            )
            meter.finish()
        return show(image)


def show(image: Image) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    columns = (*IMAGE_COLUMNS, "os_hash_value", "kernel_id", "ramdisk_id", "properties")
    values = [_image_value(image, c) for c in columns[:-1]]
    values.append(" ".join(f"{k}={v}" for k, v in sorted(image.properties.items())))
    return columns, tuple(values)


class ListImages(_RegionCommand, Lister):
    """List the images of a region."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        self.add_region(parser)
        parser.add_argument("--name", help="Only images with this name.")
        return parser

    def take_action(self, parsed_args):
        store, region = self.store_and_region(parsed_args)
        images = sorted(store.list_images(region), key=lambda im: (im.name, im.id))
        if parsed_args.name is not None:
            images = [im for im in images if im.name == parsed_args.name]
        return IMAGE_COLUMNS, [image_row(im) for im in images]


class ShowImage(_RegionCommand, ShowOne):
    """Show one image of a region."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "image", metavar="IMAGE", help="Image id, or a name only one image has."
        )
        self.add_region(parser)
        return parser

    def take_action(self, parsed_args):
        store, region = self.store_and_region(parsed_args)
        return show(find_image(store, region, parsed_args.image))


class DeleteImage(_RegionCommand, Command):
    """Delete images of a region by id (or by a name only one image has)."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("images", nargs="+", metavar="IMAGE")
        self.add_region(parser)
        return parser

    def take_action(self, parsed_args):
        store, region = self.store_and_region(parsed_args)
        # Every name is resolved before the first delete: a bad one deletes nothing.
        found = [find_image(store, region, ref) for ref in parsed_args.images]
        for image in found:
            store.delete_image(region, image.id)


class Regions(Lister):
    """List the regions of every target (the master region is marked)."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("--target", help="Only this target.")
        add_sync_options(parser)
        return parser

    def take_action(self, parsed_args):
        sync = build_sync(self.app, parsed_args)
        if parsed_args.target:
            sync.config.target(parsed_args.target)  # unknown target: one-line error
            per_target = {parsed_args.target: sync.target_regions(parsed_args.target)}
        else:
            per_target = sync.all_regions()
        rows = []
        if sync_config.MASTER in per_target:
            rows.append((sync_config.MASTER, sync.config.master_region, "master"))
        for target, regions in per_target.items():
            rows.extend((target, region, "") for region in regions)
        return ("target", "region", "role"), rows


class _Failures:
    """Turn per-region failures into one line and the first failure's exit code."""

    app: Any

    def finish(self, failed: list[tuple[str, str, type[StowkitError] | None]], total: int) -> int:
        if not failed:
            return 0
        names = "; ".join(f"{region}: {error}" for region, error, _ in failed)
        print(
            f"{self.app.NAME}: failed in {len(failed)} of {total} region(s): {names}",
            file=self.app.stderr,
        )
        kind = failed[0][2] or StowkitError
        return EXIT_CODES.get(kind.__name__, kind.exit_code)


class Status(_Failures, Lister):
    """GlanceSync status of every image to sync: STATUS, REGION, IMAGE."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("regions", nargs="*", metavar="REGION")
        add_sync_options(parser)
        return parser

    def take_action(self, parsed_args):
        sync = build_sync(self.app, parsed_args)
        results = sync.status(parsed_args.regions)
        self._failed = [(r.region, r.error, r.error_type) for r in results if not r.ok]
        self._total = len(results)
        rows = [
            (entry.status, r.region, entry.master.name)
            for r in results
            if r.plan
            for entry in r.plan.entries
        ]
        return ("status", "region", "image"), rows

    def produce_output(self, parsed_args, column_names, data):
        if parsed_args.formatter == "csv":
            # GlanceSync's own lines: STATUS,REGION,IMAGE, no header, no quotes
            # unless a name needs them (as `stowkit-glancesync --show-status`).
            self.app.stdout.write(sync_report.status_lines(data))
            return 0
        return super().produce_output(parsed_args, column_names, data)

    def run(self, parsed_args):
        self._failed, self._total = [], 0
        rc = super().run(parsed_args)
        return rc or self.finish(self._failed, self._total)


class Sync(_Failures, Lister):
    """Synchronise regions from the master region (all regions when none is named)."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("regions", nargs="*", metavar="REGION")
        parser.add_argument(
            "--dry-run", action="store_true", help="Show what would change; change nothing."
        )
        parser.add_argument(
            "--parallel",
            action="store_true",
            help="Synchronise regions at the same time (up to [main] max_children).",
        )
        add_progress_option(parser)
        add_sync_options(parser)
        return parser

    def take_action(self, parsed_args):
        sync = build_sync(self.app, parsed_args)

        def progress(region: str, done: Any) -> None:
            LOG.info("%s: %s %s", region, done.action, done.image)

        # One line for all regions: the fan-out copies an image to them at once.
        board = SyncProgress(self.app.stderr, progress_enabled(self.app, parsed_args))
        try:
            report: SyncReport = sync.sync(
                parsed_args.regions,
                dry_run=parsed_args.dry_run,
                parallel=parsed_args.parallel,
                progress=progress,
                observer=board.observer,
            )
        finally:
            board.close()
        self._failed = [(r.region, r.error, r.error_type) for r in report.failed]
        self._total = len(report.results)
        self._summary = report.summary()
        rows = [
            (r.region, d.action, d.image, Bytes(d.size), d.detail)
            for r in report.results
            for d in r.done
        ]
        return ("region", "action", "image", "size", "detail"), rows

    def run(self, parsed_args):
        self._failed, self._total, self._summary = [], 0, ""
        rc = super().run(parsed_args)
        if rc == 0 and self._summary:
            print(self._summary, file=self.app.stderr)
        return rc or self.finish(self._failed, self._total)


class Backup(_Failures, Lister):
    """Write GlanceSync metadata backups: backup_REGION.csv per region (master included)."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("regions", nargs="*", metavar="REGION")
        parser.add_argument("--dir", default=".", help="Directory for the files (default: .).")
        add_sync_options(parser)
        return parser

    def take_action(self, parsed_args):
        sync = build_sync(self.app, parsed_args)
        rows = sync.backup(parsed_args.dir, parsed_args.regions)
        self._failed = [(region, err, StowkitError) for region, _p, err in rows if err]
        self._total = len(rows)
        return ("region", "file"), [(region, path) for region, path, err in rows if not err]

    def run(self, parsed_args):
        self._failed, self._total = [], 0
        rc = super().run(parsed_args)
        return rc or self.finish(self._failed, self._total)


class LoadBackups(Lister):
    """Load a directory of GlanceSync backups (backup_REGION.csv) into the local store."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("directory")
        parser.add_argument(
            "--replace", action="store_true", help="Replace each region's metadata entirely."
        )
        return parser

    def take_action(self, parsed_args):
        store = self.app.driver("image")
        store.require(ImageCapability.LOAD_BACKUP)
        loaded = store.load_backups(parsed_args.directory, replace=parsed_args.replace)
        return ("region", "images"), sorted(loaded.items())


class Serve(ServeCommand, Command):
    """Serve GlanceSync's REST API (v1): region status, sync tasks (cheroot)."""

    group = "image_sync_api"
    no_auth_help = (
        "no Keystone: every caller may read, sync and delete. Only for a single trusted host."
    )

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        add_sync_options(parser)
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        # Imported here: only the server needs the API module (and cheroot).
        from stowkit.corelib.imagesync import api
        from stowkit.corelib.web import serving

        opts, bind, port = self.listen(parsed_args, api.register_opts)
        tasks = self.driver("imagetask")
        ended = api.start(tasks)
        if ended:
            self.app.stderr.write(f"{ended} task(s) left syncing by a stopped service: failed\n")
        overrides = sync_config.parse_overrides(parsed_args.config)
        wsgi, app = api.build_app(
            self.app.conf,
            self.driver("image"),
            tasks,
            auth=self.auth(parsed_args),
            sync_config=parsed_args.sync_config,
            overrides=overrides,
        )
        tasks.close()  # no pooled connection may cross into forked workers
        n = parsed_args.workers or opts.workers
        self.announce("GlanceSync API", bind, port, f"{n} worker(s)", parsed_args)
        name, stop = api.SERVER_NAME, app.runner.shutdown  # unfinished tasks end as failed
        serving.serve(self.app.conf, api.GROUP, wsgi, bind, port, n, name=name, on_stop=stop)
        return 0


COMMANDS = {
    "image create": CreateImage,
    "image list": ListImages,
    "image show": ShowImage,
    "image delete": DeleteImage,
    "image regions": Regions,
    "image status": Status,
    "image sync": Sync,
    "image backup": Backup,
    "image load-backups": LoadBackups,
    "image serve": Serve,
}
