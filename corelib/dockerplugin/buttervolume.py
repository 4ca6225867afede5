"""buttervolume 3.13's verbs on any VolumeDriver: its socket routes and their meaning.

buttervolume's command line does all its work through HTTP routes on its
plugin socket (``/VolumeDriver.Snapshot``, ``/VolumeDriver.Schedule``, ...).
:class:`ButtervolumeRoutes` serves those routes with the request and
response shapes buttervolume 3.13 uses, so its own CLI (and scripts that
post to its socket) work against stowkit's socket.  The functions here are
also what ``stowkit-buttervolume`` calls, so the two never disagree about
what, say, ``schedule snapshot pause v1`` or a globally paused schedule means.

Every route calls the VolumeDriver methods and the JobStore operations
the ``stowkit`` commands use, and runs volume jobs (snapshot, purge, sync)
with :func:`stowkit.corelib.volumejobs.run`; nothing here knows a backend.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from stowkit.corelib import volumejobs
from stowkit.corelib.errors import BackendUnavailable, InvalidArgument, NotFound, StowkitError
from stowkit.corelib.names import check_name
from stowkit.corelib.schedule.jobs import JobStore
from stowkit.corelib.volumejobs import VolumeAction, VolumeJob

#: buttervolume's answer to any schedule change or listing while globally paused
GLOBALLY_PAUSED = "Schedule is globally paused"

Handler = Callable[[Mapping[str, Any]], dict[str, Any]]


class GloballyPaused(StowkitError):
    """The whole schedule is paused (``scheduled pause``): buttervolume refuses, exit 1."""

    exit_code = 1
    http_status = 409

    def __init__(self) -> None:
        super().__init__(GLOBALLY_PAUSED)


def minutes_text(minutes: float) -> str:
    """An interval as buttervolume writes it: whole minutes without a fraction."""
    return str(int(minutes)) if minutes == int(minutes) else str(minutes)


def change_schedule(store: JobStore, volume: str, action: str, timer: object) -> None:
    """``schedule ACTION TIMER VOLUME``: TIMER is minutes, ``0``/``delete``, ``pause``, ``resume``.

    As buttervolume: refused while globally paused; minutes add the job or give
    an existing one the new interval (and make it active again); deleting a job
    that is not there is no error.  Unlike buttervolume, a TIMER that is none
    of these, or pausing a job that does not exist, is an error rather than
    silently nothing.
    """
    text = str(timer).strip()
    if store.load().paused:
        raise GloballyPaused()
    if text in ("0", "delete"):
        try:
            store.remove(volume, action)
        except NotFound:
            pass
    elif text == "pause":
        store.set_active(False, volume, action)
    elif text == "resume":
        store.set_active(True, volume, action)
    else:
        store.add(volume, action, text)


def schedule_rows(store: JobStore) -> list[dict[str, str]]:
    """The jobs as buttervolume's ``Schedule.List`` gives them: its CSV columns, as text."""
    schedule = store.load()
    if schedule.paused:
        raise GloballyPaused()
    return [
        {
            "Name": job.volume,
            "Action": job.action,
            "Timer": minutes_text(job.minutes),
            "Active": str(job.active),
        }
        for job in schedule.jobs
    ]


def scheduled_line(row: Mapping[str, Any]) -> str:
    """One line of ``scheduled``, exactly as buttervolume prints it.

    Its trailing space on an active job included: the line is
    ``ACTION TIMER NAME `` followed by ``(paused)`` or nothing.
    """
    paused = "(paused)" if row.get("Active") == "False" else ""
    return f"{row['Action']} {row['Timer']} {row['Name']} {paused}"


def _text(body: Mapping[str, Any], key: str, what: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{what} needs {key} (a string)")
    return value


def _texts(body: Mapping[str, Any], key: str, what: str) -> list[str]:
    value = body.get(key)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidArgument(f"{what} needs {key} (a list of strings)")
    return value


def _flag(body: Mapping[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


class ButtervolumeRoutes:
    """buttervolume 3.13's extension routes over a VolumeDriver and a JobStore.

    ``routes`` maps each path to its handler; a handler takes the request's
    JSON object and returns the answer, raising StowkitError for ``{"Err": ...}``
    (the app turns it into one).  ``/VolumeDriver.Snapshot.List/VOLUME`` is
    handed its volume as ``Name``.  Answers carry buttervolume's keys; a few
    add keys buttervolume lacks (``Mode`` and ``Parent`` of a send, ``Deleted``
    of a purge), which its CLI ignores.
    """

    SNAPSHOT_LIST_PREFIX = "/VolumeDriver.Snapshot.List/"

    def __init__(self, driver: Any, schedule: JobStore | None) -> None:
        self.driver = driver
        self.schedule = schedule
        self.routes: dict[str, Handler] = {
            "/VolumeDriver.Snapshot": self.snapshot,
            "/VolumeDriver.Snapshot.List": self.snapshot_list,
            "/VolumeDriver.Snapshot.Remove": self.snapshot_remove,
            "/VolumeDriver.Snapshot.Send": self.snapshot_send,
            "/VolumeDriver.Snapshot.Restore": self.snapshot_restore,
            "/VolumeDriver.Snapshots.Purge": self.snapshots_purge,
            "/VolumeDriver.Clone": self.clone,
            "/VolumeDriver.Volume.Sync": self.volume_sync,
            "/VolumeDriver.Schedule": self.schedule_change,
            "/VolumeDriver.Schedule.List": self.schedule_list,
            "/VolumeDriver.Schedule.Pause": self.schedule_pause,
            "/VolumeDriver.Schedule.Resume": self.schedule_resume,
        }

    def _store(self) -> JobStore:
        if self.schedule is None:
            raise InvalidArgument("this plugin serves no schedule")
        return self.schedule

    # -- snapshots ---------------------------------------------------------------

    def snapshot(self, body: Mapping[str, Any]) -> dict[str, Any]:
        job = VolumeJob(check_name(body.get("Name"), "volume name"), VolumeAction.SNAPSHOT)
        return {"Err": "", "Snapshot": volumejobs.run(self.driver, job).message}

    def snapshot_list(self, body: Mapping[str, Any]) -> dict[str, Any]:
        # The directory's entries as buttervolume lists them, sent markers included.
        name = body.get("Name")
        volume = check_name(name, "volume name") if name else None
        return {"Err": "", "Snapshots": list(self.driver.snapshot_entries(volume))}

    def snapshot_remove(self, body: Mapping[str, Any]) -> dict[str, Any]:
        self.driver.delete_snapshot(_text(body, "Name", "Snapshot.Remove"))
        return {"Err": ""}

    def snapshot_send(self, body: Mapping[str, Any]) -> dict[str, Any]:
        # buttervolume's "Test" (receive into the peer's TEST_REMOTE_PATH) is
        # what stowkit always does: sends land in the peer's received directory.
        name = _text(body, "Name", "Snapshot.Send")
        host = _text(body, "Host", "Snapshot.Send")
        result = self.driver.send_snapshot(name, host)
        return {
            "Err": "",
            "Mode": volumejobs.send_mode(result),
            "Parent": result.parent,
            "BytesSent": result.bytes_sent,
        }

    def snapshot_restore(self, body: Mapping[str, Any]) -> dict[str, Any]:
        name = _text(body, "Name", "Snapshot.Restore")
        target = body.get("Target") or None
        result = self.driver.restore(name, target)
        answer: dict[str, Any] = {"Err": ""}
        if result.backup:
            answer["VolumeBackup"] = result.backup
        return answer

    def snapshots_purge(self, body: Mapping[str, Any]) -> dict[str, Any]:
        name = check_name(body.get("Name"), "volume name")
        job = VolumeJob(name, VolumeAction.PURGE, pattern=_text(body, "Pattern", "Snapshots.Purge"))
        purged = volumejobs.run(self.driver, job, dry_run=_flag(body, "Dryrun")).purged
        return {"Err": "", "Deleted": list(purged.deleted if purged else ())}

    # -- volumes -----------------------------------------------------------------

    def clone(self, body: Mapping[str, Any]) -> dict[str, Any]:
        name = check_name(body.get("Name"), "volume name")
        target = body.get("Target")
        if not target:
            raise InvalidArgument("clone needs the name of the new volume (Target)")
        return {"Err": "", "VolumeCloned": self.driver.clone_volume(name, target).name}

    def volume_sync(self, body: Mapping[str, Any]) -> dict[str, Any]:
        volumes = _texts(body, "Volumes", "Volume.Sync")
        hosts = _texts(body, "Hosts", "Volume.Sync")
        errors = []
        for volume in volumes:
            job = VolumeJob(volume, VolumeAction.SYNCHRONIZE, hosts=tuple(hosts))
            try:
                volumejobs.run(self.driver, job)
            except BackendUnavailable as err:  # a peer refused: the other volumes go on
                errors.append(str(err))
        return {"Err": "; ".join(errors)}

    # -- schedule ----------------------------------------------------------------

    def schedule_change(self, body: Mapping[str, Any]) -> dict[str, Any]:
        timer = body.get("Timer")
        if isinstance(timer, bool) or not isinstance(timer, str | int | float):
            raise InvalidArgument("Schedule needs Timer (minutes, 0, delete, pause or resume)")
        change_schedule(
            self._store(),
            check_name(body.get("Name"), "volume name"),
            _text(body, "Action", "Schedule"),
            timer,
        )
        return {"Err": ""}

    def schedule_list(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return {"Err": "", "Schedule": schedule_rows(self._store())}

    def schedule_pause(self, body: Mapping[str, Any]) -> dict[str, Any]:
        self._store().set_active(False)
        return {"Err": ""}

    def schedule_resume(self, body: Mapping[str, Any]) -> dict[str, Any]:
        self._store().set_active(True)
        return {"Err": ""}


def route_for(routes: Mapping[str, Handler], path: str) -> tuple[Handler | None, str | None]:
    """The handler of ``path`` and, for ``Snapshot.List/VOLUME``, the volume part."""
    handler = routes.get(path)
    prefix = ButtervolumeRoutes.SNAPSHOT_LIST_PREFIX
    if handler is None and path.startswith(prefix):
        return routes.get(prefix.rstrip("/")), path[len(prefix) :]
    return handler, None
