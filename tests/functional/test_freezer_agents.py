"""freezer's own agents, unmodified, against stowkit's catalog on PostgreSQL.

freezer-scheduler 19 (from the harness's ``freezerclient`` venv) polls stowkit's
catalog served behind the harness Keystone, registers its client, starts a job
made with ``freezer job-create`` without a ``job-start``, launches freezer-agent
19, which backs a directory up to its local storage, and posts the backup
document; a restore job brings the data back, identical, elsewhere.  A
restarted scheduler runs no completed job again.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib
import signal
import socket
import stat
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.fakes.harness import missing
from tests.fakes.keystone_catalog import Api

# The catalog server behind Keystone, its scratch database and the freezer CLI
# are fixtures of tests/functional/conftest.py (database, keystone, catalog_url, freezer).

# The scheduler's searches (any-depth match_not) must hold on PostgreSQL: only that one.
pytestmark = pytest.mark.parametrize("database", ["postgresql"], indirect=True)

#: A hang guard for each wait, not a measurement: polling is every second.
WAIT = 180


@pytest.fixture(scope="module")
def agents(service) -> dict[str, Any]:
    record = service("freezerclient")
    for key in ("scheduler_bin", "agent_bin"):
        if not pathlib.Path(record.get(key, "")).exists():
            missing(f"freezerclient has no {key}: python -m tools.stack start freezerclient")
    return record


class Scheduler:
    """freezer-scheduler in the foreground, in its own session, logging to a file."""

    def __init__(
        self,
        binary: str,
        env: dict[str, str],
        argv: list[str],
        out: pathlib.Path,
        log: pathlib.Path,
    ):
        self.out, self.log = out, log
        with open(out, "wb") as fh:
            self.proc = subprocess.Popen(
                [binary, *argv],
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pgid = self.proc.pid  # its own session: the group id is its pid
        self.stopped = False

    def text(self) -> str:
        """Its log (``--log-file``), then what it printed."""
        return "".join(
            path.read_text(errors="replace") for path in (self.log, self.out) if path.exists()
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM to the whole group (the scheduler and any agent it runs), then wait."""
        if self.stopped:
            return  # the group id is not ours any more once its processes are gone
        self.stopped = True
        if self.proc.poll() is None:
            try:
                os.killpg(self.pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.pgid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        # Agents it launched share its group; none may outlive the test.
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_for(what: str, check: Callable[[], Any], scheduler: Scheduler | None = None) -> Any:
    deadline = time.monotonic() + WAIT
    while True:
        value = check()
        if value:
            return value
        if scheduler is not None:
            assert scheduler.alive(), f"scheduler exited:\n{scheduler.text()[-4000:]}"
        assert time.monotonic() < deadline, f"gave up waiting for {what}" + (
            f"\n{scheduler.text()[-4000:]}" if scheduler else ""
        )
        time.sleep(0.5)


def tree(root: pathlib.Path) -> dict[str, tuple[str, int, bytes]]:
    """Relative path -> (kind, permission bits, content or link target) of everything under root."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            kind, data = "link", os.readlink(path).encode()
        elif stat.S_ISDIR(st.st_mode):
            kind, data = "dir", b""
        else:
            kind, data = "file", path.read_bytes()
        out[str(path.relative_to(root))] = (kind, stat.S_IMODE(st.st_mode), data)
    return out


def make_source(src: pathlib.Path) -> None:
    (src / "etc" / "app.d").mkdir(parents=True)
    (src / "etc" / "app.conf").write_text("[main]\nworkers = 4\n")
    (src / "etc" / "app.d" / "10-extra.conf").write_text("# nothing\n")
    (src / "data").mkdir()
    (src / "data" / "blob.bin").write_bytes(os.urandom(300_000) + bytes(range(256)))
    (src / "data" / "empty").write_bytes(b"")
    (src / "bin").mkdir()
    (src / "bin" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "bin" / "run.sh").chmod(0o750)
    (src / "current").symlink_to("etc/app.conf")
    (src / "name with spaces.txt").write_text("ünïcode\n")


def job_file(path: pathlib.Path, description: str, action: dict[str, Any]) -> pathlib.Path:
    """A freezer job of one action that runs once, as soon as the scheduler has it."""
    when = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + 2))
    path.write_text(
        json.dumps(
            {
                "description": description,
                "job_actions": [{"freezer_action": action, "max_retries": 0}],
                "job_schedule": {"schedule_date": when},
            }
        )
    )
    return path


@pytest.fixture
def work(tmp_path) -> Iterator[dict[str, pathlib.Path]]:
    dirs = {
        name: tmp_path / name
        for name in ("src", "storage", "restored", "jobs", "home", "logs", "etc")
    }
    for path in dirs.values():
        path.mkdir()
    yield dirs


@pytest.fixture
def launch(agents, freezer, work) -> Iterator[Callable[[str, str], Scheduler]]:
    """``launch(client_id, log_name)`` starts a scheduler; every one is stopped at the end."""
    venv_bin = pathlib.Path(agents["scheduler_bin"]).parent
    env = dict(
        freezer.env,  # the member user's OS_* variables and OS_BACKUP_URL
        # freezer-scheduler finds freezer-agent on PATH; both write under ~/.freezer.
        PATH=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        HOME=str(work["home"]),
    )
    # An empty config file so no /etc/freezer/scheduler.conf of the machine is read.
    conf = work["etc"] / "scheduler.conf"
    conf.write_text("")
    started: list[Scheduler] = []

    def start(client_id: str, log_name: str) -> Scheduler:
        scheduler = Scheduler(
            agents["scheduler_bin"],
            env,
            [
                "--config-file",
                str(conf),
                "--scheduler-no-daemon",
                "--scheduler-client-id",
                client_id,
                "--scheduler-interval",
                "1",
                "--scheduler-jobs-dir",
                str(work["jobs"]),
                "--log-file",
                str(work["logs"] / log_name),
                "start",
            ],
            work["logs"] / f"{log_name}.out",
            work["logs"] / log_name,
        )
        started.append(scheduler)
        return scheduler

    yield start
    for scheduler in started:
        scheduler.stop()


def list_backups(api: Any, backup_name: str) -> list[dict[str, Any]]:
    search = {"match": [{"backup_name": backup_name}]}
    status, body = api.call("GET", f"/v2/{api.project}/backups?limit=100", search)
    assert status == 200, body
    return body["backups"]


def test_scheduler_and_agent_back_up_and_restore(freezer, launch, keystone, catalog_url, work):
    member = keystone["member"]
    tag = uuid.uuid4().hex[:8]
    client_id = f"{member['project_id']}_agents-{tag}.example.org"
    backup_name = f"tree-{tag}"
    make_source(work["src"])

    def scheduler(log_name: str) -> Scheduler:
        return launch(client_id, log_name)

    def agent_log(name: str) -> pathlib.Path:
        return work["logs"] / f"agent-{name}.log"

    def action(name: str, **fields: Any) -> dict[str, Any]:
        # freezer-agent's defaults but for what the job is about, and its log
        # file (by default /var/log/freezer-agent/, a system path).
        return {
            "backup_name": backup_name,
            "storage": "local",
            "container": str(work["storage"]),
            "log_file": str(agent_log(name)),
            **fields,
        }

    def job(job_id: str) -> dict[str, Any]:
        return Api(catalog_url, member).call("GET", f"/v2/{member['project_id']}/jobs/{job_id}")[1]

    def backups() -> list[dict[str, Any]]:
        return list_backups(Api(catalog_url, member), backup_name)

    first = scheduler("scheduler-1.log")
    # It registers its client at start.
    clients = wait_for(
        "the scheduler's client",
        lambda: [
            row
            for row in freezer("client-list", "--limit", "100")
            if row.get("Client ID") == client_id
        ],
        first,
    )
    assert clients[0]["hostname"] == socket.gethostname()
    registered = Api(catalog_url, member).call(
        "GET", f"/v2/{member['project_id']}/clients/{client_id}"
    )[1]
    assert "backup" in registered["client"]["supported_actions"]
    assert registered["client"]["is_central"] is False

    # A backup job: no job-start, the scheduler takes it as it is.
    spec = job_file(
        work["etc"] / "backup.json",
        "backup of the tree",
        action("backup", action="backup", mode="fs", path_to_backup=str(work["src"])),
    )
    created = freezer("job-create", "--file", str(spec), "--client", client_id)
    backup_job = created["Job ID"]
    seen: list[tuple[str, str]] = []

    def finished(job_id: str) -> bool:
        shown = freezer("job-show", job_id)
        state = (shown["Status"], shown["Result"])
        if not seen or seen[-1] != state:
            seen.append(state)
        return shown["Status"] == "completed"

    wait_for("the backup job to complete", lambda: finished(backup_job), first)
    assert seen[-1] == ("completed", "success"), (seen, first.text()[-4000:])
    # Whatever the polls caught in between, the states come in the scheduler's order.
    order = ["", "scheduled", "running", "completed"]
    assert [order.index(s) for s, _ in seen] == sorted(order.index(s) for s, _ in seen)
    done = job(backup_job)["job_schedule"]
    assert done["status"] == "completed" and done["result"] == "success"
    assert 0 < done["time_started"] <= done["time_ended"]
    assert "Job execution Started" in agent_log("backup").read_text()

    # freezer-agent wrote the backup to its local storage...
    assert any(work["storage"].rglob(f"*{backup_name}*")), list(work["storage"].rglob("*"))
    # ...and the scheduler posted its document to stowkit's catalog.
    (doc,) = wait_for("the backup document", backups, first)
    meta = doc["backup_metadata"]
    assert doc["status"] == "available" and doc["project_id"] == member["project_id"]
    assert meta["backup_name"] == backup_name and meta["job_id"] == backup_job
    assert meta["hostname"] == socket.gethostname()
    assert meta["container"] == str(work["storage"])
    assert meta["path_to_backup"] == meta["fs_real_path"] == str(work["src"])
    assert (meta["action"], meta["mode"], meta["storage"]) == ("backup", "fs", "local")
    assert (meta["engine_name"], meta["compression"]) == ("tar", "gzip")
    assert meta["curr_backup_level"] == 0 and isinstance(meta["time_stamp"], int)
    assert meta["max_level"] == "" and meta["always_level"] == ""  # agent defaults, kept
    rows = list(
        csv.DictReader(
            io.StringIO(freezer("backup-list", "--limit", "100", "-f", "csv", fmt=False))
        )
    )
    assert doc["backup_id"] in [row["Backup ID"] for row in rows]
    listed = next(row for row in rows if row["Backup ID"] == doc["backup_id"])
    assert (listed["Path"], listed["Status"], listed["Level"]) == (
        str(work["src"]),
        "available",
        "0",
    )

    # A restore job brings the same tree back elsewhere.
    spec = job_file(
        work["etc"] / "restore.json",
        "restore of the tree",
        action("restore", action="restore", restore_abs_path=str(work["restored"])),
    )
    restore_job = freezer("job-create", "--file", str(spec), "--client", client_id)["Job ID"]
    seen.clear()
    wait_for("the restore job to complete", lambda: finished(restore_job), first)
    assert seen[-1] == ("completed", "success"), (seen, first.text()[-4000:])
    assert tree(work["restored"]) == tree(work["src"])
    assert len(backups()) == 1  # a restore posts no backup document

    # Restart: no completed job runs again.
    before = {job_id: job(job_id) for job_id in (backup_job, restore_job)}
    agent_runs = {name: agent_log(name).read_text() for name in ("backup", "restore")}
    first.stop()
    assert first.proc.returncode is not None
    log1 = first.text()
    second = scheduler("scheduler-2.log")

    def polled_nothing() -> bool:
        # Three polls of the API that found no active job for this client.
        return second.text().count("Fetched 0 jobs from API") >= 3

    wait_for("three polls by the restarted scheduler", polled_nothing, second)
    second.stop()
    text2 = second.text()
    assert "Client already registered" in text2
    for job_id in (backup_job, restore_job):
        assert job_id not in text2, text2[-4000:]
        assert job(job_id)["job_schedule"] == before[job_id]["job_schedule"]
    assert {name: agent_log(name).read_text() for name in agent_runs} == agent_runs
    assert len(backups()) == 1
    # The first scheduler ran the agent exactly once per job.
    assert log1.count(f"Job {backup_job} action backup returned success") == 1
    assert log1.count(f"Job {restore_job} action restore returned success") == 1


def test_every_run_of_a_recurring_job_is_catalogued(freezer, launch, keystone, catalog_url, work):
    """A job every few seconds into a local container named by a long path, then job-stop.

    The backup ids are made of the container: cut at 255 characters they lost
    the time stamp and every run after the first was refused (409).
    """
    member = keystone["member"]
    api = Api(catalog_url, member)
    tag = uuid.uuid4().hex[:8]
    client_id = f"{member['project_id']}_recurring-{tag}.example.org"
    backup_name = f"often-{tag}"
    (work["src"] / "file").write_text("data\n")
    container = work["storage"] / ("long-local-storage-path-" * 10)
    spec = work["etc"] / "recurring.json"
    spec.write_text(
        json.dumps(
            {
                "description": "every 2 seconds",
                "job_actions": [
                    {
                        "freezer_action": {
                            "action": "backup",
                            "mode": "fs",
                            "path_to_backup": str(work["src"]),
                            "backup_name": backup_name,
                            "storage": "local",
                            "container": str(container),
                            "log_file": str(work["logs"] / "agent-recurring.log"),
                        }
                    }
                ],
                "job_schedule": {"schedule_interval": "2 seconds"},
            }
        )
    )
    scheduler = launch(client_id, "scheduler-recurring.log")
    job_id = freezer("job-create", "--file", str(spec), "--client", client_id)["Job ID"]

    def runs() -> int:
        return scheduler.text().count(f"Job {job_id} action backup returned success")

    wait_for("three runs", lambda: runs() >= 3, scheduler)
    freezer("job-stop", job_id, fmt=False)

    def stopped() -> bool:
        schedule = api.call("GET", f"/v2/{api.project}/jobs/{job_id}")[1]["job_schedule"]
        # "stop" when it was waiting, "completed" when the stop found it running.
        if schedule["status"] in ("stop", "completed"):
            return True
        if schedule["event"] == "":
            # freezer-scheduler PATCHes its whole job_schedule, event "" included,
            # when a run starts and ends: a stop stored just before it never
            # reaches its next poll (so with freezer-api too). Send it again.
            freezer("job-stop", job_id, fmt=False)
        return False

    wait_for("the stop to be taken", stopped, scheduler)
    polls = scheduler.text().count("Polling for jobs from API")
    wait_for(
        "three more polls",
        lambda: scheduler.text().count("Polling for jobs from API") >= polls + 3,
        scheduler,
    )
    done = runs()
    assert "agent output processing error" not in scheduler.text()
    docs = list_backups(api, backup_name)
    assert len(docs) == done >= 3  # one document per run, none refused
    assert len({doc["backup_id"] for doc in docs}) == done
    assert all(len(doc["backup_id"]) <= 255 for doc in docs)
    assert {doc["backup_metadata"]["container"] for doc in docs} == {str(container)}
    scheduler.stop()
    assert runs() == done  # stopped: no run after the job-stop was taken
