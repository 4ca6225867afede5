"""``stowkit-glancesync``: GlanceSync's ``sync.py`` front end on the stowkit engine.

Same flags as sync.py: ``[--dry-run] [--show-status] [--show-regions]
[--make-backup] [--parallel] [--config SECTION.KEY=VALUE]... [REGION...]``,
plus ``--sync-config FILE`` (GlanceSync read ``GLANCESYNC_CONFIG`` or
/etc/glancesync.conf; both are honoured here when no file is given) and
stowkit's ``--config-file``.

Status lines are ``STATUS,REGION,IMAGE``; ``--make-backup`` writes
``backup_glance_TIMESTAMP/backup_REGION.csv`` in the current directory.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
from collections.abc import Sequence

from stowkit.cli.common import install_log_handlers, one_line_errors, report
from stowkit.corelib import config, imagesync, registry
from stowkit.corelib.errors import EXIT_CODES, StowkitError
from stowkit.corelib.imagesync import config as sync_config
from stowkit.corelib.imagesync import report as sync_report

PROG = "stowkit-glancesync"
LEGACY_CONFIG = "/etc/glancesync.conf"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Synchronise Glance images from the master region to other regions.",
        allow_abbrev=False,
    )
    p.add_argument("regions", nargs="*", metavar="REGION", help="REGION, TARGET:REGION or TARGET:")
    p.add_argument("--dry-run", action="store_true", help="Show what would be done; do nothing.")
    p.add_argument("--show-status", action="store_true", help="Print STATUS,REGION,IMAGE lines.")
    p.add_argument("--show-regions", action="store_true", help="Print the regions to sync.")
    p.add_argument("--make-backup", action="store_true", help="Back up every region's metadata.")
    p.add_argument("--parallel", action="store_true", help="Sync regions simultaneously.")
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="Override a sync configuration option (repeatable).",
    )
    p.add_argument("--sync-config", metavar="FILE", help="GlanceSync configuration file.")
    p.add_argument("--config-file", action="append", default=[], help="stowkit configuration.")
    one_line_errors(p, PROG)
    return p


def _sync_config_path(args: argparse.Namespace) -> str | None:
    if args.sync_config:
        return args.sync_config
    if os.environ.get("GLANCESYNC_CONFIG"):
        return os.environ["GLANCESYNC_CONFIG"]
    if os.path.isfile(LEGACY_CONFIG):
        return LEGACY_CONFIG
    return None


def _exit_code(failed: Sequence[tuple[str, str, type[StowkitError] | None]]) -> int:
    if not failed:
        return 0
    names = "; ".join(f"{region}: {error}" for region, error, _ in failed)
    print(f"{PROG}: failed in {len(failed)} region(s): {names}", file=sys.stderr)
    kind = failed[0][2] or StowkitError
    return EXIT_CODES.get(kind.__name__, kind.exit_code)


def run(args: argparse.Namespace) -> int:
    conf = config.load_conf(args.config_file or None)
    store = registry.load("image", conf)
    try:
        overrides = sync_config.parse_overrides(args.config)
        sync = imagesync.build(conf, store, _sync_config_path(args), overrides)
        if args.show_regions:
            for regions in sync.all_regions().values():
                for region in regions:
                    print(region)
            return 0
        if args.make_backup:
            stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
            rows = sync.backup(f"backup_glance_{stamp}", args.regions)
            for region, path, err in rows:
                print(f"{region}: {path}" if path else f"{region}: ERROR {err}")
            return _exit_code([(r, e, StowkitError) for r, _p, e in rows if e])
        if args.show_status:
            results = sync.status(args.regions)
            lines = [
                (e.status, r.region, e.master.name)
                for r in results
                if r.plan
                for e in r.plan.entries
            ]
            sys.stdout.write(sync_report.status_lines(lines))
            return _exit_code([(r.region, r.error, r.error_type) for r in results if not r.ok])

        def progress(region: str, done: imagesync.engine.A.Done) -> None:
            mib = done.size / (1 << 20)
            pending = "Pending: " if args.dry_run else ""
            size = f" ({mib:.1f} MB)" if done.size else ""
            print(f"{region}: {pending}{done.action} {done.image}{size}", flush=True)

        result = sync.sync(
            args.regions, dry_run=args.dry_run, parallel=args.parallel, progress=progress
        )
        for region_result in result.results:
            if region_result.ok and not region_result.done:
                print(f"{region_result.region}: Region is synchronized.")
        print(result.summary())
        return _exit_code([(r.region, r.error, r.error_type) for r in result.failed])
    finally:
        store.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    install_log_handlers([console], logging.WARNING)
    try:
        return run(args)
    except StowkitError as err:
        return report(err, PROG)


if __name__ == "__main__":
    sys.exit(main())
