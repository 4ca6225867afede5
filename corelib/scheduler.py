"""Periodic jobs per volume: when each is due, running them, honest results.

A job is ``(volume, action)`` with its own interval in minutes (fractions
allowed).  Actions are the ones buttervolume users know:

``snapshot``                 take a snapshot of the volume
``replicate:HOST``           take a snapshot and send it to HOST
``purge:PATTERN``            apply a retention pattern (``4h:1d:2w``) to the volume
``synchronize:HOST1,HOST2``  take a local snapshot, then pull the volume from the peers

Design choices, each against a fault of the seed tool:

* A job is due when ``now >= last_run + interval`` (a new job is due at once),
  so a 60-minute job runs once an hour whatever the tick is.
* Whatever a job raises is recorded as its result: a replication to an
  unreachable host is ``failed`` with the message, never logged as success.
* One job per volume at a time: a per-volume ``flock`` (so two processes
  sharing a schedule cannot overlap either).  Jobs of different volumes run
  concurrently on a bounded thread pool.
* The schedule is one JSON file, the single source of truth shared by the
  running daemon and ``stowkit schedule`` commands.  Every change is a
  read-modify-write under an exclusive lock on ``FILE.lock`` followed by an
  atomic rename, so a crash never leaves a half-written schedule.
* Or, with ``[scheduler] store = catalog``, the jobs are this host's jobs in
  the backup catalog (:class:`CatalogScheduleStore`): the same commands edit
  them, ``freezer job-list`` shows them, ``stowkit agent`` runs them, and the
  embedded :class:`Scheduler` does not (``JobStore.runs_here``).  One
  interface, :class:`JobStore`; :func:`open_store` picks the implementation.

The scheduler calls the same :class:`~stowkit.corelib.volume.VolumeDriver` methods as
the CLI and imports no backend.
"""

from __future__ import annotations

import abc
import concurrent.futures
import contextlib
import csv
import dataclasses
import fcntl
import io
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from oslo_config import cfg

from stowkit.corelib import names, retention
from stowkit.corelib.errors import (
    BackendUnavailable,
    InvalidArgument,
    Locked,
    NotFound,
    StowkitError,
)
from stowkit.corelib.names import check_name

if TYPE_CHECKING:
    from stowkit.corelib.catalogclient import CatalogClient

LOG = logging.getLogger(__name__)

GROUP = "scheduler"

opts = [
    cfg.StrOpt(
        "store",
        default="file",
        choices=[
            ("file", "the schedule file; the plugin's embedded scheduler runs the jobs"),
            (
                "catalog",
                "this host's jobs in the backup catalog, reached as `stowkit agent` "
                "reaches it ([agent] options); `stowkit agent` runs them, the embedded "
                "scheduler does not",
            ),
        ],
        help="Where `stowkit schedule` and the Docker plugin keep the scheduled jobs.",
    ),
    cfg.StrOpt(
        "schedule_file",
        default="$state_dir/schedule.json",
        help="JSON file holding the scheduled jobs and their last results.",
    ),
    cfg.StrOpt(
        "lock_dir",
        default="$state_dir/locks",
        help="Directory of the per-volume lock files (one job per volume at a time).",
    ),
    cfg.IntOpt(
        "max_workers",
        default=4,
        min=1,
        help="How many jobs (of different volumes) may run at the same time.",
    ),
    cfg.FloatOpt(
        "tick",
        default=1.0,
        min=0.05,
        help="Longest sleep, in seconds, between two looks at the schedule.",
    ),
]

ACTIONS = ("snapshot", "replicate", "purge", "synchronize")
OK = "ok"
FAILED = "failed"
SKIPPED = "skipped"


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(opts, group=GROUP)


def check_host(host: str) -> str:
    """The rule ``volume send``/``sync`` apply (:func:`stowkit.corelib.names.check_host`).

    Checked when a job is added, so a host its run would refuse never gets
    into the schedule file.
    """
    names.check_host(host)
    return host


def parse_action(action: str) -> tuple[str, list[str]]:
    """``'replicate:h1'`` -> ``('replicate', ['h1'])``; raise on anything unknown."""
    if not isinstance(action, str) or not action:
        raise InvalidArgument("invalid action: it must not be empty")
    kind, sep, arg = action.partition(":")
    if kind not in ACTIONS:
        raise InvalidArgument(
            f"invalid action {action!r}: use snapshot, replicate:HOST, purge:PATTERN "
            "or synchronize:HOST1,HOST2"
        )
    if kind == "snapshot":
        if sep:
            raise InvalidArgument(f"invalid action {action!r}: snapshot takes no argument")
        return kind, []
    if not arg:
        raise InvalidArgument(f"invalid action {action!r}: {kind} needs an argument")
    if kind == "purge":
        retention.parse_pattern(arg)  # the one parser purge itself uses
        return kind, [arg]
    if kind == "replicate":
        return kind, [check_host(arg)]
    hosts = [check_host(h) for h in arg.split(",")]
    return kind, hosts


def parse_minutes(value: object) -> float:
    try:
        minutes = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidArgument(f"invalid interval {value!r}: a number of minutes") from None
    if not minutes > 0 or minutes != minutes or minutes == float("inf"):
        raise InvalidArgument(f"invalid interval {value!r}: must be more than 0 minutes")
    return minutes


@dataclasses.dataclass
class Job:
    volume: str
    action: str
    minutes: float
    active: bool = True
    added: float = 0.0
    last_run: float | None = None
    last_result: str | None = None
    last_message: str = ""
    last_duration: float | None = None
    runs: int = 0
    failures: int = 0

    @property
    def key(self) -> str:
        return f"{self.volume} {self.action}"

    @property
    def interval(self) -> float:
        """Seconds between two runs."""
        return self.minutes * 60.0

    @property
    def next_run(self) -> float:
        """When the job is due: at once when new, else last run + interval."""
        return self.added if self.last_run is None else self.last_run + self.interval

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


@dataclasses.dataclass
class Schedule:
    jobs: list[Job] = dataclasses.field(default_factory=list)
    paused: bool = False

    def find(self, volume: str, action: str) -> Job:
        for job in self.jobs:
            if job.volume == volume and job.action == action:
                return job
        raise NotFound(f"no scheduled job {action!r} for volume {volume!r}")


class JobStore(abc.ABC):
    """Where the scheduled jobs live: what ``stowkit schedule`` and the plugin edit."""

    #: Whether the embedded :class:`Scheduler` runs these jobs (else another
    #: process does: ``stowkit agent`` for the catalog).
    runs_here: bool = True

    @abc.abstractmethod
    def load(self) -> Schedule:
        """Every job, and the global switch."""

    @abc.abstractmethod
    def add(
        self,
        volume: str,
        action: str,
        minutes: object,
        active: bool = True,
        now: float | None = None,
    ) -> Job:
        """Schedule ``action`` on ``volume``; an existing job gets the new interval."""

    @abc.abstractmethod
    def remove(self, volume: str, action: str) -> None:
        """Unschedule one job; ``NotFound`` if there is none."""

    @abc.abstractmethod
    def set_active(self, active: bool, volume: str | None = None, action: str | None = None) -> int:
        """Pause or resume one job, a volume's jobs, or all; how many it touched."""

    @abc.abstractmethod
    def import_csv(self, text: str, now: float | None = None) -> list[Job]:
        """Merge a buttervolume schedule; one bad line refuses the whole file."""

    def changed_since(self, mtime: float) -> bool:
        """Whether the jobs here were set after ``mtime`` (a file's modification time).

        Decides whether buttervolume's schedule.csv is taken over again.  A store
        that keeps no time (the catalog) counts as changed once it holds a job:
        a schedule in use is never replaced by an older tool's file.
        """
        return bool(self.load().jobs)

    def export_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        for job in self.load().jobs:
            minutes = int(job.minutes) if job.minutes == int(job.minutes) else job.minutes
            writer.writerow([job.volume, job.action, minutes, str(job.active)])
        return out.getvalue()


class ScheduleStore(JobStore):
    """The schedule file: read, and change under a lock with an atomic rename."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self._thread_lock = threading.Lock()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with self._thread_lock, open(self.path + ".lock", "a") as lockfile:
            fcntl.flock(lockfile, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lockfile, fcntl.LOCK_UN)

    def changed_since(self, mtime: float) -> bool:
        try:
            return os.stat(self.path).st_mtime >= mtime
        except FileNotFoundError:
            return False

    def _read(self) -> Schedule:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return Schedule()
        except (OSError, ValueError) as exc:
            raise StowkitError(f"cannot read schedule file {self.path}: {exc}") from None
        return Schedule(
            jobs=[Job.from_dict(j) for j in data.get("jobs", [])],
            paused=bool(data.get("paused", False)),
        )

    def _write(self, schedule: Schedule) -> None:
        data = {
            "version": 1,
            "paused": schedule.paused,
            "jobs": [j.to_dict() for j in schedule.jobs],
        }
        directory = os.path.dirname(self.path)
        fd, tmp = tempfile.mkstemp(prefix=".schedule-", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def load(self) -> Schedule:
        with self._locked():
            return self._read()

    def update(self, change: Callable[[Schedule], Any]) -> Any:
        """Apply ``change`` to the schedule and save it; nothing is saved if it raises."""
        with self._locked():
            schedule = self._read()
            result = change(schedule)
            self._write(schedule)
            return result

    # -- the operations the CLI and the compat front end offer -------------------

    def add(
        self,
        volume: str,
        action: str,
        minutes: object,
        active: bool = True,
        now: float | None = None,
    ) -> Job:
        """Schedule ``action`` on ``volume``; an existing job gets the new interval."""
        check_name(volume, "volume name")
        parse_action(action)
        interval = parse_minutes(minutes)
        stamp = time.time() if now is None else now

        def change(schedule: Schedule) -> Job:
            try:
                job = schedule.find(volume, action)
            except NotFound:
                job = Job(volume=volume, action=action, minutes=interval, added=stamp)
                schedule.jobs.append(job)
            job.minutes = interval
            job.active = active
            return job

        return self.update(change)

    def remove(self, volume: str, action: str) -> None:
        check_name(volume, "volume name")

        def change(schedule: Schedule) -> None:
            schedule.jobs.remove(schedule.find(volume, action))

        self.update(change)

    def set_active(self, active: bool, volume: str | None = None, action: str | None = None) -> int:
        """Pause or resume one job (volume and action), a volume's jobs, or the whole schedule.

        With neither volume nor action the global switch flips, so jobs
        paused one by one stay paused after a global resume.  Returns how many
        jobs the call touched.
        """
        if volume is not None:
            check_name(volume, "volume name")

        def change(schedule: Schedule) -> int:
            if volume is None and action is None:
                schedule.paused = not active
                return len(schedule.jobs)
            if action is not None:
                jobs = (
                    [schedule.find(volume, action)]
                    if volume
                    else [j for j in schedule.jobs if j.action == action]
                )
            else:
                jobs = [j for j in schedule.jobs if j.volume == volume]
            if not jobs:
                raise NotFound(f"no scheduled job matches volume {volume!r} action {action!r}")
            for job in jobs:
                job.active = active
            return len(jobs)

        return self.update(change)

    def import_csv(self, text: str, now: float | None = None) -> list[Job]:
        """Merge a buttervolume schedule (``volume,action,minutes[,active]`` lines).

        The whole file is checked first: one bad line refuses the import and
        leaves the schedule as it was.
        """
        parsed = parse_buttervolume_csv(text)
        stamp = time.time() if now is None else now

        def change(schedule: Schedule) -> list[Job]:
            out = []
            for volume, action, minutes, active in parsed:
                try:
                    job = schedule.find(volume, action)
                except NotFound:
                    job = Job(volume=volume, action=action, minutes=minutes, added=stamp)
                    schedule.jobs.append(job)
                job.minutes, job.active = minutes, active
                out.append(job)
            return out

        return self.update(change)


FileScheduleStore = ScheduleStore

#: scheduler action kind -> the agent's action (corelib/agent/actions.py) and its fields
AGENT_ACTIONS = {
    "snapshot": "stowkit-volume-snapshot",
    "replicate": "stowkit-volume-replicate",
    "purge": "stowkit-volume-purge",
    "synchronize": "stowkit-volume-sync",
}
_KINDS = {agent: kind for kind, agent in AGENT_ACTIONS.items()}
#: freezer's job results as the scheduler names them
_RESULTS = {"success": OK, "fail": FAILED, "aborted": FAILED}
_IDLE = frozenset({"stop", "removed", "completed"})


def freezer_action(volume: str, action: str) -> dict[str, Any]:
    """The ``freezer_action`` of the agent that does ``action`` on ``volume``."""
    kind, args = parse_action(action)
    body: dict[str, Any] = {"action": AGENT_ACTIONS[kind], "volume": volume}
    if kind == "replicate":
        body["host"] = args[0]
    elif kind == "purge":
        body["pattern"] = args[0]
    elif kind == "synchronize":
        body["hosts"] = list(args)
    return body


def action_of(job: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(volume, action)`` of a catalog job made of one stowkit volume action, else None."""
    steps = job.get("job_actions")
    if not isinstance(steps, list) or len(steps) != 1 or not isinstance(steps[0], Mapping):
        return None
    body = steps[0].get("freezer_action")
    if not isinstance(body, Mapping) or body.get("action") not in _KINDS:
        return None
    kind, volume = _KINDS[body["action"]], body.get("volume")
    arg = {"replicate": body.get("host"), "purge": body.get("pattern")}.get(kind)
    if kind == "synchronize":
        hosts = body.get("hosts")
        arg = ",".join(hosts) if isinstance(hosts, list) else hosts
    action = kind if kind == "snapshot" else f"{kind}:{arg}"
    try:
        check_name(volume, "volume name")
        parse_action(action)
    except InvalidArgument:
        return None  # not one the schedule commands could have written
    return volume, action


def interval_text(minutes: float) -> str:
    """Minutes as a ``schedule_interval`` (whole seconds: what the agent reads)."""
    if minutes == int(minutes):
        return f"{int(minutes)} minutes"
    seconds = round(minutes * 60)
    if seconds < 1:
        raise InvalidArgument(f"invalid interval {minutes!r}: the catalog counts whole seconds")
    return f"{seconds} seconds"


class CatalogScheduleStore(JobStore):
    """This host's jobs in the backup catalog, one stowkit volume action per job.

    A job is ``job_actions`` = one ``freezer_action`` of the agent
    (``stowkit-volume-snapshot``, ``-replicate``, ``-purge``, ``-sync``) and
    ``job_schedule.schedule_interval``; pause and resume are freezer's
    ``stop`` and ``start`` events, remove deletes the job.  The last run,
    result and message are the agent's (``time_started``, ``result``,
    ``claim.message``).  Jobs of the client that are not one such action
    (freezer backups, image syncs) are left out.  There is no global switch:
    ``--all`` stops or starts every job.
    """

    runs_here = False

    def __init__(self, catalog: CatalogClient, client_id: str, hostname: str) -> None:
        self.catalog = catalog
        self.client_id = client_id
        self.hostname = hostname

    def _jobs(self) -> list[tuple[str, Job]]:
        found = []
        for doc in self.catalog.client_jobs(self.client_id):
            which = action_of(doc)
            if which is None or not doc.get("job_id"):
                continue
            found.append((str(doc["job_id"]), self._job(which, doc)))
        return found

    @staticmethod
    def _job(which: tuple[str, str], doc: Mapping[str, Any]) -> Job:
        from stowkit.corelib.agent.triggers import parse_interval  # the agent's reading

        sched = doc.get("job_schedule") or {}
        try:
            minutes = parse_interval(str(sched.get("schedule_interval", ""))) / 60.0
        except InvalidArgument:
            minutes = 0.0  # another schedule (cron, a date): not an interval
        status, event = sched.get("status") or "", sched.get("event") or ""
        active = event == "start" or (
            status not in _IDLE and event not in ("stop", "abort", "remove")
        )
        claim = sched.get("claim") if isinstance(sched.get("claim"), Mapping) else {}
        started, ended = sched.get("time_started"), sched.get("time_ended")
        ran = isinstance(started, int) and started > 0
        created = sched.get("time_created")
        return Job(
            volume=which[0],
            action=which[1],
            minutes=minutes,
            active=active,
            # The agent's first run is one interval after the job is scheduled.
            added=(created if isinstance(created, int) else 0) + minutes * 60.0,
            last_run=float(started) if ran else None,
            last_result=_RESULTS.get(sched.get("result") or "") if ran else None,
            last_message=str(claim.get("message", "")),
            last_duration=(
                float(ended - started)
                if ran and isinstance(ended, int) and ended >= started
                else None
            ),
            runs=int(claim.get("run", 0) or 0),
        )

    def load(self) -> Schedule:
        return Schedule(jobs=[job for _, job in self._jobs()], paused=False)

    def _find(self, volume: str, action: str) -> tuple[str, Job]:
        for job_id, job in self._jobs():
            if job.volume == volume and job.action == action:
                return job_id, job
        raise NotFound(f"no scheduled job {action!r} for volume {volume!r}")

    def add(
        self,
        volume: str,
        action: str,
        minutes: object,
        active: bool = True,
        now: float | None = None,
    ) -> Job:
        check_name(volume, "volume name")
        body = freezer_action(volume, action)
        interval = interval_text(parse_minutes(minutes))
        try:
            job_id, job = self._find(volume, action)
        except NotFound:
            self.catalog.register_client(
                {
                    "client_id": self.client_id,
                    "hostname": self.hostname,
                    "description": "stowkit agent",
                }
            )
            schedule: dict[str, Any] = {"schedule_interval": interval}
            if not active:
                schedule["status"] = "stop"  # an idle status: the agent leaves it alone
            self.catalog.create_job(
                {
                    "description": f"stowkit schedule: {action} {volume}",
                    "client_id": self.client_id,
                    "job_actions": [{"freezer_action": body, "max_retries": 1}],
                    "job_schedule": schedule,
                }
            )
        else:
            self.catalog.patch_job(job_id, {"job_schedule": {"schedule_interval": interval}}, None)
            if job.active != active:
                self.catalog.job_event(job_id, "start" if active else "stop")
        return self._find(volume, action)[1]

    def remove(self, volume: str, action: str) -> None:
        check_name(volume, "volume name")
        self.catalog.delete_job(self._find(volume, action)[0])

    def set_active(self, active: bool, volume: str | None = None, action: str | None = None) -> int:
        if volume is not None:
            check_name(volume, "volume name")
        jobs = self._jobs()
        if action is not None and volume:
            jobs = [self._find(volume, action)]
        elif action is not None:
            jobs = [(i, j) for i, j in jobs if j.action == action]
        elif volume is not None:
            jobs = [(i, j) for i, j in jobs if j.volume == volume]
        if not jobs and (volume is not None or action is not None):
            raise NotFound(f"no scheduled job matches volume {volume!r} action {action!r}")
        for job_id, job in jobs:
            if job.active != active:
                # A start on an active job would reschedule it from now: only real changes.
                self.catalog.job_event(job_id, "start" if active else "stop")
        return len(jobs)

    def import_csv(self, text: str, now: float | None = None) -> list[Job]:
        parsed = parse_buttervolume_csv(text)  # every line checked before any write
        return [self.add(v, a, m, active) for v, a, m, active in parsed]


def open_store(
    conf: cfg.ConfigOpts, connect: Callable[[cfg.ConfigOpts], CatalogClient] | None = None
) -> JobStore:
    """The store ``[scheduler] store`` names.

    ``connect(conf)`` gives the catalog client; by default this host's, as the
    agent reaches it (:func:`stowkit.corelib.catalogclient.connect`, Keystone included).
    """
    register_opts(conf)
    group = conf[GROUP]
    if group.store == "catalog":
        from stowkit.corelib import catalogclient  # late: the file store needs no HTTP client

        if connect is None:
            catalog = catalogclient.connect(conf, catalogclient.login(conf))
        else:
            catalog = connect(conf)
        return CatalogScheduleStore(catalog, catalog.client_id, catalog.hostname)
    return ScheduleStore(group.schedule_file)


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


# -- running jobs ---------------------------------------------------------------


def run_action(driver: Any, volume: str, action: str) -> str:
    """Do one job through the VolumeDriver; return a short success message.

    These are the calls ``stowkit snapshot create|send|purge`` and
    ``stowkit volume sync`` make.  A failure raises, and so does a sync that
    some peer refused: the job is then recorded as failed.
    """
    kind, args = parse_action(action)
    if kind == "snapshot":
        return driver.create_snapshot(volume).name
    if kind == "replicate":
        sent = driver.replicate(volume, args[0])
        how = "incremental" if sent.parent else "full"
        if sent.already_there:
            how = "already there"
        return f"{sent.snapshot} sent to {sent.host} ({how})"
    if kind == "purge":
        result = driver.purge(volume, args[0], dry_run=False)
        return f"{len(result.deleted)} snapshot(s) deleted, {len(result.kept)} kept"
    # synchronize: the driver snapshots the local data first, then pulls
    result = driver.sync_volume(volume, args)
    if not result.ok:
        raise BackendUnavailable(sync_failures(result))
    return f"{result.backup} taken, synchronized from {','.join(args)}"


def sync_failures(result: Any) -> str:
    """One line naming each peer a sync failed from, with its reason."""
    parts = [
        msg if peer in msg else f"{peer}: {msg}"
        for peer, msg in result.peers.items()
        if msg != "ok"
    ]
    return f"sync of {result.volume} failed: " + "; ".join(parts)


class VolumeLocks:
    """One job per volume: a non-blocking ``flock`` on ``lock_dir/VOLUME.lock``."""

    def __init__(self, lock_dir: str) -> None:
        self.lock_dir = lock_dir

    @contextlib.contextmanager
    def hold(self, volume: str) -> Iterator[None]:
        check_name(volume, "volume name")
        os.makedirs(self.lock_dir, exist_ok=True)
        with open(os.path.join(self.lock_dir, f"{volume}.lock"), "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Locked(f"volume {volume!r} is busy with another job") from None
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


class Scheduler:
    """Runs due jobs of a :class:`ScheduleStore` against one VolumeDriver.

    ``run_due()`` does one pass (tests call it directly); ``start()`` runs
    passes in a thread until ``stop()``.
    """

    def __init__(
        self,
        driver: Any,
        store: ScheduleStore,
        lock_dir: str,
        max_workers: int = 4,
        tick: float = 1.0,
        runner: Callable[[Any, str, str], str] = run_action,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.driver = driver
        self.store = store
        self.locks = VolumeLocks(lock_dir)
        self.tick = tick
        self.runner = runner
        self.clock = clock
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="stowkit-job"
        )
        self._running: set[str] = set()  # volumes with a job in flight in this process
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts, driver: Any, **kwargs: Any) -> Scheduler:
        register_opts(conf)
        group = conf[GROUP]
        return cls(
            driver,
            ScheduleStore(group.schedule_file),
            group.lock_dir,
            max_workers=group.max_workers,
            tick=group.tick,
            **kwargs,
        )

    def due_jobs(self, now: float | None = None) -> list[Job]:
        now = self.clock() if now is None else now
        schedule = self.store.load()
        if schedule.paused:
            return []
        with self._mutex:
            busy = set(self._running)
        due, seen = [], set()
        for job in sorted(schedule.jobs, key=lambda j: j.next_run):
            if not job.active or job.next_run > now:
                continue
            # one job per volume: the most overdue goes first, the rest wait a tick
            if job.volume in busy or job.volume in seen:
                continue
            seen.add(job.volume)
            due.append(job)
        return due

    def run_due(self, wait: bool = True) -> list[concurrent.futures.Future]:
        """Start every job that is due now; with ``wait`` return once they are done."""
        futures = []
        for job in self.due_jobs():
            with self._mutex:
                if job.volume in self._running:
                    continue
                self._running.add(job.volume)
            futures.append(self._pool.submit(self._run_one, job.volume, job.action))
        if wait:
            concurrent.futures.wait(futures)
        return futures

    def _run_one(self, volume: str, action: str) -> None:
        try:
            started = self.clock()
            try:
                with self.locks.hold(volume):
                    message = self.runner(self.driver, volume, action)
                result = OK
            except Locked as exc:
                # Another process holds the volume: not a run, try again next tick.
                LOG.info("skipping %s on %s: %s", action, volume, exc)
                return
            except StowkitError as exc:
                result, message = FAILED, str(exc)
            except Exception as exc:  # a bug or an OS error: still an honest failure
                LOG.exception("job %s on %s crashed", action, volume)
                result, message = FAILED, f"{type(exc).__name__}: {exc}"
            finished = self.clock()
            log = LOG.info if result == OK else LOG.error
            log("job %s on %s %s: %s", action, volume, result, message)
            self._record(volume, action, started, finished, result, message)
        finally:
            with self._mutex:
                self._running.discard(volume)

    def _record(
        self, volume: str, action: str, started: float, finished: float, result: str, message: str
    ) -> None:
        def change(schedule: Schedule) -> None:
            try:
                job = schedule.find(volume, action)
            except NotFound:
                return  # removed while it ran
            # The next run counts from the start, so the rate is the interval
            # whatever the job's duration.
            job.last_run = started
            job.last_result = result
            job.last_message = " ".join(message.split())[:500]
            job.last_duration = round(finished - started, 3)
            job.runs += 1
            job.failures += result == FAILED

        self.store.update(change)

    # -- background loop ----------------------------------------------------------

    def _sleep_time(self) -> float:
        try:
            schedule = self.store.load()
        except StowkitError:
            return self.tick
        upcoming = [j.next_run for j in schedule.jobs if j.active and not schedule.paused]
        if not upcoming:
            return self.tick
        return max(0.01, min(self.tick, min(upcoming) - self.clock()))

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_due(wait=False)
            except Exception:  # keep the loop alive; the next tick tries again
                LOG.exception("scheduler pass failed")
            self._stop.wait(self._sleep_time())

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name="stowkit-scheduler", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop looking for due jobs and wait for the running ones to finish."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._pool.shutdown(wait=True, cancel_futures=True)


def job_rows(jobs: Sequence[Job], paused: bool = False) -> list[dict[str, Any]]:
    """Jobs as plain dicts for listings (times as ISO 8601 UTC)."""

    def iso(stamp: float | None) -> str | None:
        if stamp is None:
            return None
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))

    rows = []
    for job in jobs:
        state = "paused" if not job.active else "paused (all)" if paused else "active"
        rows.append(
            {
                "volume": job.volume,
                "action": job.action,
                "minutes": job.minutes,
                "state": state,
                "last_run": iso(job.last_run),
                "last_result": job.last_result,
                "last_message": job.last_message,
                "next_run": iso(job.next_run) if state == "active" else None,
                "runs": job.runs,
                "failures": job.failures,
            }
        )
    return rows
