"""GlanceSync's report formats: status lines and metadata backups.

* Status: one ``STATUS,REGION,IMAGE`` line per image to sync, smallest first.
* Backup: one CSV per region named ``backup_REGION.csv`` with GlanceSync's
  field order ``region,name,id,status,size,checksum,owner,is_public,properties``;
  the last field is the Python ``repr`` of the user-property dict (kernel_id and
  ramdisk_id included), which is what GlanceSync wrote and what its tools read.
  Reading it back uses :func:`ast.literal_eval` only, so old Python 2
  backups (``{u'type': u'baseimages'}``) load too.
"""

from __future__ import annotations

import ast
import csv
import io
import os
from collections.abc import Iterable, Sequence

from stowkit.corelib.errors import InvalidArgument
from stowkit.corelib.image import Image
from stowkit.corelib.names import check_name

BACKUP_FIELDS = (
    "region",
    "name",
    "id",
    "status",
    "size",
    "checksum",
    "owner",
    "is_public",
    "properties",
)


def status_lines(rows: Iterable[tuple[str, str, str]]) -> str:
    """``STATUS,REGION,IMAGE`` lines (CSV-quoted where a name needs it)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for row in rows:
        writer.writerow(row)
    return out.getvalue()


def backup_row(image: Image, region: str | None = None) -> list[str]:
    return [
        region or image.region,
        image.name,
        image.id,
        image.status,
        str(image.size or 0),
        image.checksum or "",
        image.owner or "",
        str(image.is_public),
        repr(image.user_properties()),
    ]


def write_backup(path: str, images: Sequence[Image], region: str | None = None) -> None:
    """Write one region's backup atomically."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        for image in images:
            writer.writerow(backup_row(image, region))
    os.replace(tmp, path)


def backup_file_name(region: str) -> str:
    return f"backup_{region}.csv"


def parse_properties(text: str) -> dict[str, str]:
    text = text.strip()
    if not text:
        return {}
    # What a hostile file can make literal_eval raise besides a syntax error:
    # deep nesting (RecursionError, MemoryError), a huge int (ValueError),
    # unhashable keys (TypeError).
    unreadable = (ValueError, SyntaxError, TypeError, RecursionError, MemoryError)
    try:
        value = ast.literal_eval(text)
    except unreadable:
        # GlanceSync also accepted the keyword form: a='1', b='2'
        try:
            tree = ast.parse(f"dict({text})", mode="eval")
            call = tree.body
            if not isinstance(call, ast.Call) or call.args:
                raise ValueError
            if any(kw.arg is None for kw in call.keywords):
                raise ValueError  # **mapping
            value = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
        except unreadable:
            raise InvalidArgument(f"cannot read properties {text[:40]!r}") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"properties must be a dict, got {text[:40]!r}")
    try:
        return {str(k): str(v) for k, v in value.items()}
    except (RecursionError, MemoryError, ValueError):
        raise InvalidArgument(f"cannot read properties {text[:40]!r}") from None


def read_backup(path: str) -> list[Image]:
    """Images of a ``backup_REGION.csv`` file."""
    images: list[Image] = []
    lineno = 0
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            for lineno, row in enumerate(csv.reader(fh), 1):
                if row:
                    images.append(_backup_image(path, lineno, row))
    except (csv.Error, UnicodeDecodeError) as exc:
        # a field past csv's limit, bytes that are not UTF-8: one line, not a trace
        reason = str(exc).splitlines()[0][:120]
        raise InvalidArgument(f"{path}:{lineno + 1}: unreadable backup line: {reason}") from None
    return images


def _backup_image(path: str, lineno: int, row: list[str]) -> Image:
    """One row of a backup file; every field checked before it is used."""
    if len(row) < 9:
        raise InvalidArgument(f"{path}:{lineno}: expected 9 fields, got {len(row)}")
    region, name, image_id, status, size, checksum, owner, public = row[:8]
    # the id names a file in the embedded store: refused here, at load time
    check_name(image_id, f"image id at {path}:{lineno}")
    props = parse_properties(",".join(row[8:]))
    kernel = props.pop("kernel_id", None) or None
    ramdisk = props.pop("ramdisk_id", None) or None
    try:
        size_value = int(size)
    except ValueError:
        size_value = -1
    if size_value < 0:
        raise InvalidArgument(f"{path}:{lineno}: size {size[:40]!r} is not a number of bytes")
    return Image(
        id=image_id,
        name=name,
        region=region,
        owner=owner or None,
        size=size_value,
        checksum=checksum or None,
        status=status,
        visibility="public" if public.strip() == "True" else "private",
        properties=props,
        kernel_id=kernel,
        ramdisk_id=ramdisk,
    )
