"""buttervolume's ``schedule.csv``: ``Name,Action,Timer,Active`` lines, read and written."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable

from stowkit.corelib.errors import InvalidArgument
from stowkit.corelib.names import check_name
from stowkit.corelib.schedule.jobs import Job, parse_minutes
from stowkit.corelib.volumejobs import parse_action


def parse_buttervolume_csv(text: str) -> list[tuple[str, str, float, bool]]:
    """Lines of buttervolume's ``schedule.csv``: ``Name,Action,Timer,Active``.

    ``Active`` is ``True``/``False`` and may be missing (older files): active.
    """
    result = []
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), 1):
        if not row or all(not cell.strip() for cell in row) or row[0].lstrip().startswith("#"):
            continue
        if len(row) not in (3, 4):
            raise InvalidArgument(
                f"schedule line {lineno}: expected volume,action,minutes[,active], "
                f"got {len(row)} fields"
            )
        volume, action, minutes = (cell.strip() for cell in row[:3])
        active_text = row[3].strip() if len(row) == 4 else "True"
        if active_text not in ("True", "False", "true", "false", ""):
            raise InvalidArgument(
                f"schedule line {lineno}: active must be True or False, not {active_text!r}"
            )
        try:
            check_name(volume, "volume name")
            parse_action(action)
            interval = parse_minutes(minutes)
        except InvalidArgument as exc:
            raise type(exc)(f"schedule line {lineno}: {exc}") from None
        result.append((volume, action, interval, active_text.lower() != "false"))
    return result


def export_csv(jobs: Iterable[Job]) -> str:
    """The jobs as buttervolume writes its schedule.csv (whole minutes without a fraction)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for job in jobs:
        minutes = int(job.minutes) if job.minutes == int(job.minutes) else job.minutes
        writer.writerow([job.volume, job.action, minutes, str(job.active)])
    return out.getvalue()
