"""stowkit-buttervolume prints what buttervolume 3.13's CLI prints, verb by verb.

The expectations are buttervolume 3.13's behaviour, read from its cli.py and
plugin.py (and checked against the real program by
tests/functional/test_buttervolume_real.py):

* ``snapshot`` prints the new snapshot's name; ``snapshots`` prints the
  snapshot directory's entries, sent markers included, one per line, and
  nothing at all for none;
* ``schedule``, ``send``, ``sync``, ``rm`` and ``purge`` print nothing
  (purge's "Deleted snapshot X" lines are the plugin's log, not output);
* ``scheduled`` prints ``ACTION TIMER NAME `` plus ``(paused)`` for a paused
  job (so an active job's line ends in a space), in the schedule's order,
  where a changed job keeps its place;
* while the schedule is globally paused, ``scheduled`` and ``schedule``
  fail with "Schedule is globally paused" and exit status 1;
* ``restore`` prints the backup it took of an existing target, else nothing;
  ``clone`` prints the new volume's name;
* ``run`` prints "Starting scheduler job every TIMERs", then
  "Listening to requests on SOCKET...".
"""

from __future__ import annotations

import io

import pytest

from stowkit.cli.compat import buttervolume
from tests.fakes.volumes import FakeDriver


class MarkedDriver(FakeDriver):
    """A fake whose snapshot directory also holds buttervolume sent markers."""

    def __init__(self) -> None:
        super().__init__()
        self.order: list[str] = []

    def create_snapshot(self, volume):
        snap = super().create_snapshot(volume)
        self.order.append(snap.name)
        return snap

    def delete_snapshot(self, name):
        if name in self.order and name not in self.snaps:
            self.order.remove(name)
            return
        super().delete_snapshot(name)
        self.order.remove(name)

    def snapshot_entries(self, volume=None):
        return [n for n in self.order if volume is None or n.startswith(volume + "@")]


@pytest.fixture
def bv(tmp_path, monkeypatch):
    driver = MarkedDriver()
    driver.create_volume("v1")
    driver.create_volume("v2")
    monkeypatch.setattr(buttervolume.registry, "load", lambda ns, conf: driver)
    for var in ("LOGLEVEL", "TIMER", "SOCKET"):
        monkeypatch.delenv(f"BUTTERVOLUME_{var}", raising=False)
    conf = tmp_path / "s.conf"
    conf.write_text(f"[DEFAULT]\nstate_dir = {tmp_path}/state\n")

    def run(*argv):
        out, err = io.StringIO(), io.StringIO()
        code = buttervolume.main(["--config-file", str(conf), *argv], out=out, err=err)
        run.err = err.getvalue()
        return code, out.getvalue()

    run.driver = driver
    return run


def test_snapshot_prints_its_name_and_snapshots_lists_markers_in_directory_order(bv):
    a = bv("snapshot", "v1")[1].strip()
    b = bv("snapshot", "v2")[1].strip()
    bv.driver.order.append(f"{a}@backup1")  # buttervolume's marker of a send of a
    c = bv("snapshot", "v1")[1].strip()
    assert bv("snapshots", "v1") == (0, f"{a}\n{a}@backup1\n{c}\n")
    assert bv("snapshots") == (0, f"{a}\n{b}\n{a}@backup1\n{c}\n")
    assert bv("snapshots", "v3") == (0, "")  # none: no line at all
    assert bv("rm", f"{a}@backup1") == (0, "")
    assert bv("snapshots", "v1") == (0, f"{a}\n{c}\n")


def test_scheduled_lines_order_and_trailing_space(bv):
    assert bv("scheduled") == (0, "")  # an empty schedule prints nothing
    for action, timer in (("snapshot", "60"), ("purge:1h:1d", "120"), ("replicate:h1", "1440")):
        assert bv("schedule", action, timer, "v1") == (0, "")
    assert bv("schedule", "snapshot", "30", "v2") == (0, "")
    assert bv("schedule", "purge:1h:1d", "pause", "v1") == (0, "")
    # a new interval keeps the job where it was, and makes it active again
    assert bv("schedule", "snapshot", "15", "v1") == (0, "")
    lines = [
        "snapshot 15 v1 ",
        "purge:1h:1d 120 v1 (paused)",
        "replicate:h1 1440 v1 ",
        "snapshot 30 v2 ",
    ]
    assert bv("scheduled") == (0, "".join(f"{line}\n" for line in lines))
    assert bv("schedule", "purge:1h:1d", "120", "v1") == (0, "")
    assert bv("scheduled", "list")[1].splitlines()[1] == "purge:1h:1d 120 v1 "
    # deleting what is not scheduled is no error, as for buttervolume
    assert bv("schedule", "snapshot", "delete", "v9") == (0, "")


def test_globally_paused_is_refused_with_exit_1(bv):
    assert bv("schedule", "snapshot", "60", "v1") == (0, "")
    assert bv("scheduled", "pause") == (0, "")
    assert bv("scheduled") == (1, "")
    assert bv.err == "stowkit-buttervolume: Schedule is globally paused\n"
    assert bv("schedule", "snapshot", "5", "v1") == (1, "")
    assert bv.err == "stowkit-buttervolume: Schedule is globally paused\n"
    assert bv("scheduled", "pause") == (0, "")  # pausing again is fine
    assert bv("scheduled", "resume") == (0, "")
    assert bv("scheduled") == (0, "snapshot 60 v1 \n")  # the change was refused


def test_quiet_verbs_print_nothing(bv):
    snap = bv("snapshot", "v1")[1].strip()
    assert bv("send", "backup1", snap) == (0, "")
    assert bv.err == f"Sent {snap} to backup1 (full)\n"
    assert bv("sync", "v1", "h1") == (0, "")
    bv("snapshot", "v1")
    assert bv("purge", "--dryrun", "1h:1d", "v1") == (0, "")
    assert bv.err.startswith(f"(Dry run) Would delete snapshot {snap}\n")
    assert bv("purge", "1h:1d", "v1") == (0, "")
    assert bv.err.startswith(f"Deleted snapshot {snap}\n")
    assert bv("rm", bv.driver.list_snapshots("v1")[-1].name) == (0, "")


def test_log_lines_follow_loglevel(bv, monkeypatch):
    snap = bv("snapshot", "v1")[1].strip()
    monkeypatch.setenv("BUTTERVOLUME_LOGLEVEL", "WARNING")
    assert bv("send", "backup1", snap) == (0, "") and bv.err == ""


def test_restore_prints_the_backup_only_when_one_was_taken(bv):
    snap = bv("snapshot", "v1")[1].strip()
    code, out = bv("restore", snap)
    assert code == 0 and out.startswith("v1@") and out.strip() != snap
    assert bv("restore", snap, "fresh") == (0, "")  # a new target: nothing to back up
    assert bv("clone", "v1", "v3") == (0, "v3\n")


def test_run_prints_buttervolumes_two_lines(bv, monkeypatch, tmp_path):
    seen = {}

    def fake_serve(conf, driver, path, out, with_scheduler=True, ready_line=""):
        seen["path"] = path
        out.write(ready_line.format(socket=path) + "\n")
        return 0

    import stowkit.cli.plugin

    monkeypatch.setattr(stowkit.cli.plugin, "serve", fake_serve)
    monkeypatch.setenv("BUTTERVOLUME_TIMER", "30")
    monkeypatch.setenv("BUTTERVOLUME_SCHEDULE", str(tmp_path / "none.csv"))
    sock = str(tmp_path / "bv.sock")
    assert bv("run", "--socket", sock) == (
        0,
        f"Starting scheduler job every 30s\nListening to requests on {sock}...\n",
    )


def test_scheduled_shows_buttervolumes_jobs_before_the_first_run(bv, monkeypatch, tmp_path):
    csv = tmp_path / "schedule.csv"
    csv.write_text("v1,snapshot,60,True\nv1,purge:1h:1d,120,False\n")
    monkeypatch.setenv("BUTTERVOLUME_SCHEDULE", str(csv))
    assert bv("scheduled") == (0, "snapshot 60 v1 \npurge:1h:1d 120 v1 (paused)\n")
    # globally paused when buttervolume stopped: its schedule.csv.disabled
    other = tmp_path / "other.csv"
    (tmp_path / "other.csv.disabled").write_text("v2,snapshot,5,True\n")
    monkeypatch.setenv("BUTTERVOLUME_SCHEDULE", str(other))
    assert bv("scheduled") == (1, "")
    assert bv.err == "stowkit-buttervolume: Schedule is globally paused\n"
