"""``stowkit blockstore ...``: set up, inspect, lock, copy and delete block devices.

The NBD server (``stowkit blockstore serve``) lives in cli/nbdserve.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from stowkit.cli.common import Bytes, Command, Lister, ShowOne, human, parse_size, utc_time
from stowkit.corelib import blockcopy, blocklease, blocklock, blockunstored
from stowkit.corelib.blocklock import DeviceLocked, LockInfo
from stowkit.corelib.blockstore import DEFAULT_OBJECT_SIZE, BlockDevice, default_object_size
from stowkit.corelib.blockunstored import UnstoredRecord, ranges
from stowkit.corelib.errors import InvalidArgument, NotFound

UPLOAD_OWNER = "stowkit blockstore upload"
MANUAL_OWNER = "stowkit blockstore lock"


def lock_fields(lock: LockInfo | None) -> dict[str, Any]:
    if lock is None:
        return {"locked_by": None}
    return {
        "locked_by": lock.describe(),
        "lock_owner": lock.owner,
        "lock_host": lock.host,
        "lock_pid": lock.pid,
        "lock_token": lock.token,
        "lock_acquired": utc_time(lock.acquired),
        "lock_expires": utc_time(lock.expires),  # None: never
        "lock_stale": lock.expired(),
    }


def unstored_fields(records: list[UnstoredRecord]) -> dict[str, Any]:
    """The newest record of what a writer could not store (all None when there is none)."""
    record = max(records, key=lambda r: r.at) if records else None
    if record is None:
        return dict.fromkeys(
            ("unstored_objects", "unstored_bytes", "unstored_ranges", "unstored_at",
             "unstored_by", "unstored_reason", "unstored_recorded_in")
        )  # fmt: skip
    return {
        "unstored_objects": len(record.objects),
        "unstored_bytes": Bytes(record.bytes),
        "unstored_ranges": ranges(record.objects),
        "unstored_at": utc_time(record.at),
        "unstored_by": record.by,
        "unstored_reason": record.reason,
        # "device": the device's record object; else this host's state file
        "unstored_recorded_in": record.where,
    }


def device_fields(dev: BlockDevice) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "name": dev.name,
        "size": Bytes(dev.size),
        "object_size": Bytes(dev.object_size),
        "objects": dev.object_count,
        "format": dev.format_version,
    }
    if dev.objects_stored is not None:
        fields["objects_stored"] = dev.objects_stored
        fields["bytes_stored"] = Bytes(dev.objects_stored * dev.object_size)
    fields.update(lock_fields(dev.lock))
    return fields


def _named(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``parser`` with the device's name as its first argument."""
    parser.add_argument("name", help="Device name.")
    return parser


def _show(fields: dict[str, Any]) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    return tuple(fields), tuple(fields.values())


class ProgressLine:
    """A one-line progress meter on stderr, only when stderr is a terminal."""

    def __init__(self, label: str, stream: Any = None, enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.label = label
        self.start = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < 0.2 and done < total:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-6)
        pct = 100 * done / total if total else 100
        self.stream.write(
            f"\r{self.label}: {pct:5.1f}% {human(done)} of {human(total)} ({human(int(rate))}/s)   "
        )
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


class Setup(ShowOne):
    """Create a block device: an empty (all zeros) device of the given size."""

    def get_parser(self, prog_name):
        parser = _named(super().get_parser(prog_name))
        parser.add_argument(
            "--size",
            required=True,
            help="Device size, e.g. 1G, 512M (a multiple of the object size).",
        )
        parser.add_argument(
            "--object-size",
            default=None,
            help="Object size, a power of two from 4K to 64M (default "
            f"{human(DEFAULT_OBJECT_SIZE)}, or the largest power of two dividing --size).",
        )
        return parser

    def take_action(self, parsed_args):
        size = parse_size(parsed_args.size)
        object_size = (
            parse_size(parsed_args.object_size)
            if parsed_args.object_size
            else default_object_size(size)
        )
        dev = self.driver("blockstore").create_device(parsed_args.name, size, object_size)
        return _show(device_fields(dev))


class ListDevices(Lister):
    """List block devices with their size, object size, objects stored and lock."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "--quick",
            action="store_true",
            help="Do not count stored objects (one listing per device).",
        )
        return parser

    def take_action(self, parsed_args):
        devices = self.driver("blockstore").list_devices(details=not parsed_args.quick)
        columns = ("name", "size", "object_size", "objects", "objects_stored", "locked_by")
        data = [
            (
                d.name,
                Bytes(d.size),
                Bytes(d.object_size),
                d.object_count,
                d.objects_stored,
                d.locked_by,
            )
            for d in devices
        ]
        return columns, data


class ShowDevice(ShowOne):
    """Show one block device: settings, objects stored, lock."""

    def get_parser(self, prog_name):
        parser = _named(super().get_parser(prog_name))
        return parser

    def take_action(self, parsed_args):
        store = self.driver("blockstore")
        dev = store.get_device(parsed_args.name, details=True)
        unstored = blockunstored.unstored_records(store, dev.name)
        return _show({**device_fields(dev), **unstored_fields(unstored)})


class LockDevice(ShowOne):
    """Lock a device by hand, so no server may write to it until `unlock`."""

    def get_parser(self, prog_name):
        parser = _named(super().get_parser(prog_name))
        parser.add_argument(
            "--lease",
            type=float,
            default=None,
            metavar="SECONDS",
            help="Let the lock go stale after this long (default: never).",
        )
        parser.add_argument("--owner", default=MANUAL_OWNER, help="Who the lock names.")
        return parser

    def take_action(self, parsed_args):
        if parsed_args.lease is not None and parsed_args.lease <= 0:
            raise InvalidArgument("--lease must be a positive number of seconds")
        lock = blocklock.take(
            self.driver("blockstore"), parsed_args.name, parsed_args.owner, parsed_args.lease
        )
        return _show({"name": parsed_args.name, **lock_fields(lock)})


class UnlockDevice(Command):
    """Break a device's lock, whoever holds it, and say whose it was."""

    def get_parser(self, prog_name):
        parser = _named(super().get_parser(prog_name))
        return parser

    def take_action(self, parsed_args):
        # Only the lock just read: one taken meanwhile is left alone (DeviceLocked).
        broken = blocklock.break_lock_read(self.driver("blockstore"), parsed_args.name)
        if broken is None:
            self.app.stdout.write(f"device {parsed_args.name} was not locked\n")
        else:
            self.app.stdout.write(
                f"unlocked device {parsed_args.name}: broke the lock of {broken.describe()}\n"
            )
        return 0


class DeleteDevice(Command):
    """Delete a device: its objects, then the device itself.  Refused while locked."""

    def get_parser(self, prog_name):
        parser = _named(super().get_parser(prog_name))
        parser.add_argument(
            "--force", action="store_true", help="Delete even while a lock is held."
        )
        return parser

    def take_action(self, parsed_args):
        broken = self.driver("blockstore").delete_device(parsed_args.name, force=parsed_args.force)
        message = f"deleted device {parsed_args.name}"
        if broken is not None:
            message += f" (it was locked by {broken.describe()})"
        self.app.stdout.write(message + "\n")
        return 0


def _threads(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not 1 <= number <= 256:
        raise InvalidArgument(f"invalid --threads {value!r}: use 1 to 256")
    return number


class _Copy(Command):
    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "--threads", default="8", help="Objects transferred in parallel (default 8)."
        )
        parser.add_argument(
            "--progress",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="Show progress on stderr (default: when stderr is a terminal).",
        )
        return parser

    def _report(self, verb: str, name: str, stats: blockcopy.CopyStats, start: float) -> None:
        seconds = max(time.monotonic() - start, 1e-6)
        line = (
            f"{verb} {name}: {human(stats.bytes)} in {seconds:.1f} s "
            f"({human(int(stats.bytes / seconds))}/s), {stats.stored} objects, "
            f"{stats.holes} holes"
        )
        if stats.deleted:
            line += f", {stats.deleted} zeroed objects deleted"
        self.app.stdout.write(line + "\n")


class Download(_Copy):
    """Copy a whole device into a local file (holes stay holes)."""

    def get_parser(self, prog_name):
        parser = _named(super().get_parser(prog_name))
        parser.add_argument("file", help="Local file (or block device) to write.")
        parser.add_argument(
            "--force",
            action="store_true",
            help="Download even while a writer holds the lock (the copy may be inconsistent).",
        )
        return parser

    def take_action(self, parsed_args):
        threads = _threads(parsed_args.threads)
        store = self.driver("blockstore")
        dev = store.get_device(parsed_args.name)
        holder = blocklock.lock_refusing_copy(dev)
        if holder is not None and not parsed_args.force:
            raise DeviceLocked(
                f"device {dev.name} is locked by {holder.describe()}: a copy taken while "
                "it is written may be inconsistent (use --force to copy anyway)",
                holder,
            )
        progress = ProgressLine(f"download {dev.name}", self.app.stderr, parsed_args.progress)
        start = time.monotonic()
        try:
            stats = blockcopy.download(store, dev.name, parsed_args.file, threads, progress)
        finally:
            progress.finish()
        self._report("downloaded", dev.name, stats, start)
        return 0


class Upload(_Copy):
    """Copy a local file onto a device (which then holds exactly the file, zero-padded)."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("file", help="Local file (or block device) to read.")
        parser.add_argument("name", help="Device name.")
        parser.add_argument(
            "--create",
            action="store_true",
            help="Create the device when missing, as large as the file (rounded up to "
            "the object size).",
        )
        parser.add_argument(
            "--object-size",
            default=None,
            help="Object size of a device made by --create (default "
            f"{human(DEFAULT_OBJECT_SIZE)}, or the largest power of two dividing the file size).",
        )
        return parser

    def take_action(self, parsed_args):
        threads = _threads(parsed_args.threads)
        store = self.driver("blockstore")
        path = parsed_args.file
        try:
            with open(path, "rb") as f:
                file_size = f.seek(0, os.SEEK_END)
        except OSError as exc:
            raise InvalidArgument(f"cannot read {path}: {exc.strerror}") from None
        try:
            store.get_device(parsed_args.name)
        except NotFound:
            if not parsed_args.create:
                raise NotFound(
                    f"device {parsed_args.name} not found (use --create to make it)"
                ) from None
            object_size = (
                parse_size(parsed_args.object_size)
                if parsed_args.object_size
                else default_object_size(file_size)
            )
            size = max(-(-file_size // object_size), 1) * object_size
            store.create_device(parsed_args.name, size, object_size)
        progress = ProgressLine(f"upload {parsed_args.name}", self.app.stderr, parsed_args.progress)
        start = time.monotonic()
        with blocklease.held(store, parsed_args.name, UPLOAD_OWNER):
            try:
                stats = blockcopy.upload(store, parsed_args.name, path, threads, progress)
            finally:
                progress.finish()
        self._report("uploaded", parsed_args.name, stats, start)
        return 0


COMMANDS = {
    "blockstore setup": Setup,
    "blockstore list": ListDevices,
    "blockstore show": ShowDevice,
    "blockstore lock": LockDevice,
    "blockstore unlock": UnlockDevice,
    "blockstore download": Download,
    "blockstore upload": Upload,
    "blockstore delete": DeleteDevice,
}
