"""``stowkit volume create|list|show|delete|clone|sync|pull|unmount|cleanup``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from stowkit.cli.common import Bytes, Command, Lister, ShowOne, utc_time
from stowkit.corelib import pull
from stowkit.corelib.errors import BackendUnavailable, InvalidArgument
from stowkit.corelib.volume import Volume, check_create_options

VOLUME_COLUMNS = ("name", "path", "created", "size", "snapshot_count", "mount_count", "options")


def parse_options(pairs: Sequence[str] | None) -> dict[str, str]:
    """``["copyonwrite=false", "compression=zstd"]`` -> dict; KEY=VALUE only."""
    options: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"invalid option {pair!r}: use KEY=VALUE")
        options[key.strip()] = value.strip()
    return options


def show_volume(volume: Volume) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    values = []
    for column in VOLUME_COLUMNS:
        value = getattr(volume, column)
        if column == "created":
            value = utc_time(value)
        elif column == "size":
            value = Bytes(value)
        elif column == "options":
            value = ",".join(f"{k}={v}" for k, v in sorted(value.items()))
        values.append(value)
    return VOLUME_COLUMNS, tuple(values)


COMPRESSION_NOTE = (
    "note: copyonwrite=true because compression needs copy-on-write "
    "(btrfs never compresses no-copy-on-write files)\n"
)


class CreateVolume(ShowOne):
    """Create a volume (a btrfs subvolume)."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("name", help="Volume name: letters, digits, '_', '.', '-'.")
        parser.add_argument(
            "-o",
            "--opt",
            action="append",
            metavar="KEY=VALUE",
            help="copyonwrite=true|false (default [volume_btrfs] copyonwrite, true), "
            "compression=zstd|lzo|zlib|none|true|false (repeatable). "
            "Compression implies copyonwrite=true (btrfs never compresses no-copy-on-write "
            "files); compression with copyonwrite=false is refused.",
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace):
        driver = self.driver("volume")
        options = parse_options(parsed_args.opt)
        check_create_options(driver, options)
        volume = driver.create_volume(parsed_args.name, options)
        shown = driver.get_volume(volume.name)
        if (
            "copyonwrite" not in options
            and getattr(getattr(driver, "opts", None), "copyonwrite", True) is False
            and shown.options.get("copyonwrite") == "true"
            and shown.options.get("compression", "none") != "none"
        ):
            # Not the configured default (copyonwrite=false) on purpose: say why.
            self.app.stderr.write(COMPRESSION_NOTE)
        return show_volume(shown)


class ListVolumes(Lister):
    """List volumes with their snapshot and mount counts."""

    def take_action(self, parsed_args: argparse.Namespace):
        columns = ("name", "created", "snapshot_count", "mount_count", "path")
        rows = [
            (
                v.name,
                utc_time(v.created),
                v.snapshot_count,
                v.mount_count,
                v.path,
            )
            for v in self.driver("volume").list_volumes()
        ]
        return columns, rows


class ShowVolume(ShowOne):
    """Show one volume: path, created time, size, snapshot and mount counts, options."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("name")
        parser.add_argument(
            "--no-size", action="store_true", help="Skip adding up the size (a walk of the tree)."
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace):
        volume = self.driver("volume").get_volume(
            parsed_args.name, with_size=not parsed_args.no_size
        )
        return show_volume(volume)


class DeleteVolume(Command):
    """Delete a volume (its snapshots are kept)."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("name")
        parser.add_argument(
            "--force", action="store_true", help="Delete even while containers mount it."
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> None:
        self.driver("volume").delete_volume(parsed_args.name, force=parsed_args.force)


class CloneVolume(ShowOne):
    """Clone a volume as a new volume (refused if the new name exists)."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("source")
        parser.add_argument("target")
        return parser

    def take_action(self, parsed_args: argparse.Namespace):
        return show_volume(
            self.driver("volume").clone_volume(parsed_args.source, parsed_args.target)
        )


class SyncVolume(Lister):
    """Snapshot a volume, then pull newer files of the same volume from peers."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("name")
        parser.add_argument("hosts", nargs="+", metavar="HOST", help="[user@]host[:port]")
        return parser

    def take_action(self, parsed_args: argparse.Namespace):
        result = self.driver("volume").sync_volume(parsed_args.name, parsed_args.hosts)
        self.app.stdout.write(f"snapshot taken first: {result.backup}\n")
        rows = [(peer, status) for peer, status in result.peers.items()]
        if not result.ok:
            # Print the table, then fail: a partial sync is not a success.
            self.produce_output(parsed_args, ("host", "result"), rows)
            failed = sum(1 for _, status in rows if status != "ok")
            raise BackendUnavailable(f"sync of {result.volume} failed from {failed} host(s)")
        return ("host", "result"), rows


PULL_COLUMNS = (
    "volume",
    "host",
    "snapshot",
    "mode",
    "parent",
    "bytes_received",
    "backup",
    "dry_run",
    "backup_id",
    "passed_over",
)


class PullVolume(ShowOne):
    """Bring here the newest copy of a volume the backup catalog knows on another host.

    The copy is received over ssh (incremental from the newest snapshot both
    hosts hold), becomes the volume VOLUME here (as snapshot restore), and
    the pull is recorded as a backup document of this host.  The catalog is
    reached as `stowkit agent` reaches it ([agent] options).
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("volume")
        parser.add_argument(
            "--from",
            dest="source",
            metavar="HOST",
            help="Only copies on this host (its name in the catalog's backup documents).",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Say which copy, and full or incremental; move nothing.",
        )
        parser.add_argument(
            "--force",
            action="store_true",
            help="Replace a volume of that name here (its data is snapshotted first), "
            "even a mounted one (as snapshot restore --force).",
        )
        parser.add_argument("--catalog-url", metavar="URL", help="[agent] catalog_url")
        parser.add_argument("--project", help="[agent] project")
        return parser

    def take_action(self, parsed_args: argparse.Namespace):
        from stowkit.corelib import catalogclient  # late: the HTTP client costs ~60 ms to import

        conf = self.app.conf
        catalog = catalogclient.connect(
            conf,
            catalogclient.login(conf),
            url=parsed_args.catalog_url,
            project=parsed_args.project,
        )
        result = pull.pull(
            self.driver("volume"),
            catalog,
            parsed_args.volume,
            catalog.hostname,
            source=parsed_args.source,
            dry_run=parsed_args.dry_run,
            force=parsed_args.force,
        )
        return PULL_COLUMNS, (
            result.volume,
            result.host,
            result.snapshot,
            result.mode,
            result.parent,
            Bytes(result.bytes_received),
            result.backup,
            result.dry_run,
            result.recorded,
            "\n".join(result.passed_over),
        )


class UnmountVolume(Lister):
    """Forget mount IDs recorded for a volume (stale ones a crash left).

    Unmounts nothing: it only stops IDs of containers that are gone from
    blocking delete and restore.  IDs recorded before the host last booted are
    already ignored.  Docker sends Unmount itself when a container stops.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("name")
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument(
            "--id", action="append", metavar="MOUNT_ID", help="One mount ID (repeatable)."
        )
        which.add_argument("--all", action="store_true", help="Every recorded mount ID.")
        return parser

    def take_action(self, parsed_args: argparse.Namespace):
        driver = self.driver("volume")
        if parsed_args.all:
            cleared = driver.clear_mounts(parsed_args.name)
        else:
            held = set(driver.mounts(parsed_args.name))
            cleared = []
            for mount_id in parsed_args.id:
                driver.unmount(parsed_args.name, mount_id)
                if mount_id in held:
                    cleared.append(mount_id)
        return ("mount_id",), [(i,) for i in cleared]


class CleanupVolumes(Lister):
    """Collect hidden temporary volumes a crashed create or restore left behind.

    Only those no live process holds; a restore's leftover may hold data and
    is kept as a snapshot, never deleted.  `stowkit plugin serve` does this
    at start too.
    """

    def take_action(self, parsed_args: argparse.Namespace):
        return ("item", "result"), list(self.driver("volume").cleanup())


COMMANDS = {
    "volume create": CreateVolume,
    "volume list": ListVolumes,
    "volume show": ShowVolume,
    "volume delete": DeleteVolume,
    "volume clone": CloneVolume,
    "volume sync": SyncVolume,
    "volume pull": PullVolume,
    "volume unmount": UnmountVolume,
    "volume cleanup": CleanupVolumes,
}
