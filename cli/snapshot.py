"""``stowkit snapshot create|list|delete|restore|send|purge``."""

from __future__ import annotations

import argparse
from typing import Any

from stowkit.cli.common import Bytes, Command, Lister, ShowOne, utc_time
from stowkit.corelib import volumejobs
from stowkit.corelib.volume import SNAPSHOT_SEPARATOR, Snapshot, parse_rate

SNAPSHOT_COLUMNS = ("name", "volume", "created", "received", "uuid", "received_uuid", "path")


def snapshot_row(snap: Snapshot) -> tuple[Any, ...]:
    return tuple(
        utc_time(getattr(snap, c)) if c == "created" else getattr(snap, c) for c in SNAPSHOT_COLUMNS
    )


class CreateSnapshot(ShowOne):
    """Take a read-only snapshot VOLUME@UTC-TIMESTAMP of a volume."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("volume")
        return parser

    def take_action(self, parsed_args: argparse.Namespace):
        return SNAPSHOT_COLUMNS, snapshot_row(
            self.driver("volume").create_snapshot(parsed_args.volume)
        )


class ListSnapshots(Lister):
    """List snapshots (local and received), oldest first; all or one volume's."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("volume", nargs="?", help="Only this volume's snapshots.")
        return parser

    def take_action(self, parsed_args: argparse.Namespace):
        snaps = self.driver("volume").list_snapshots(parsed_args.volume)
        return SNAPSHOT_COLUMNS, [snapshot_row(s) for s in snaps]


def forget_records(app: Any, volume: str, deleted: list[str]) -> None:
    """The catalog's records of deleted snapshots go with them (on a catalog client host)."""
    if not deleted:
        return
    from stowkit.corelib import catalogdocs

    trouble = catalogdocs.forget_deleted_snapshots(app.conf, volume, deleted)
    if trouble:
        app.stderr.write(f"stowkit: warning: {trouble}\n")


class DeleteSnapshot(Command):
    """Delete one snapshot."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("name", help="VOLUME@TIMESTAMP")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> None:
        self.driver("volume").delete_snapshot(parsed_args.name)
        volume = parsed_args.name.partition(SNAPSHOT_SEPARATOR)[0]
        forget_records(self.app, volume, [parsed_args.name])


class RestoreSnapshot(ShowOne):
    """Restore a snapshot (or a volume's newest one) onto its volume or TARGET.

    The volume's current data is snapshotted first, so nothing is lost.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("name", help="VOLUME@TIMESTAMP, or VOLUME for its newest snapshot")
        parser.add_argument("target", nargs="?", help="Volume to restore into (default: its own)")
        parser.add_argument(
            "--force",
            action="store_true",
            help="Restore although containers mount the volume (they keep the old "
            "tree until restarted; see doc/volumes.md).",
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace):
        result = self.driver("volume").restore(
            parsed_args.name, parsed_args.target, force=parsed_args.force
        )
        return ("volume", "snapshot", "backup"), (result.volume, result.snapshot, result.backup)


class SendSnapshot(ShowOne):
    """Send a snapshot to another host over ssh (incremental when they share one)."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("name", help="VOLUME@TIMESTAMP")
        parser.add_argument("host", help="[user@]host[:port]")
        group = parser.add_mutually_exclusive_group()
        group.add_argument(
            "--compress",
            dest="compress",
            action="store_const",
            const=True,
            help="zstd-compress the stream (zstd needed on both hosts).",
        )
        group.add_argument("--no-compress", dest="compress", action="store_const", const=False)
        parser.add_argument(
            "--bwlimit", metavar="RATE", help="Bytes per second, e.g. 500K or 10M (0 = none)."
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace):
        rate = None if parsed_args.bwlimit is None else parse_rate(parsed_args.bwlimit)
        result = self.driver("volume").send_snapshot(
            parsed_args.name, parsed_args.host, compress=parsed_args.compress, bwlimit=rate
        )
        columns = ("snapshot", "host", "mode", "parent", "bytes_sent")
        return columns, (
            result.snapshot,
            result.host,
            volumejobs.send_mode(result),
            result.parent,
            Bytes(result.bytes_sent),
        )


class PurgeSnapshots(Lister):
    """Delete a volume's snapshots by retention pattern (e.g. 4h:1d:2w:2y).

    Never deletes the newest snapshot nor the last one sent to each peer.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("volume")
        parser.add_argument("pattern", help="e.g. 4h:1d:2w:2y, 4h:1w, 2h:2h (doc/volumes.md)")
        parser.add_argument(
            "--dry-run", action="store_true", help="Only show what would be deleted."
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace):
        result = self.driver("volume").purge(
            parsed_args.volume, parsed_args.pattern, dry_run=parsed_args.dry_run
        )
        if not result.dry_run:
            forget_records(self.app, parsed_args.volume, list(result.deleted))
        verb = "would delete" if result.dry_run else "deleted"
        rows = [(name, verb, "") for name in result.deleted]
        rows += [(name, "kept", result.protected.get(name, "")) for name in result.kept]
        rows.sort(key=lambda r: r[0])
        return ("snapshot", "action", "reason"), rows


COMMANDS = {
    "snapshot create": CreateSnapshot,
    "snapshot list": ListSnapshots,
    "snapshot delete": DeleteSnapshot,
    "snapshot restore": RestoreSnapshot,
    "snapshot send": SendSnapshot,
    "snapshot purge": PurgeSnapshots,
}
