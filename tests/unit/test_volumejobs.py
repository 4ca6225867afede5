"""Volume jobs: one enum of action names, one grammar, one catalog form, one run and its message."""

from __future__ import annotations

import ast
import pathlib
import re
import threading

import pytest

from stowkit.corelib import volumejobs
from stowkit.corelib.errors import BackendUnavailable, InvalidArgument, Locked
from stowkit.corelib.volume import SendResult
from stowkit.corelib.volumejobs import VolumeAction, VolumeJob, decode, parse_action
from tests.fakes.volumes import FakeDriver

REPO = pathlib.Path(__file__).resolve().parents[2]
FREEZER_NAME = re.compile(r"stowkit-volume-[a-z]+")
#: Modules of other parts that still spell a name out; each goes once its owner uses the enum.


def _sources(*tops: str) -> list[pathlib.Path]:
    return sorted(p for top in tops for p in (REPO / top).rglob("*.py"))


def test_every_volume_action_name_written_anywhere_is_a_member():
    known = {a.freezer_name for a in VolumeAction}
    files = [*_sources("corelib", "cli", "plugins", "tests"), *(REPO / "doc").glob("*.md")]
    found = {m for f in files for m in FREEZER_NAME.findall(f.read_text())}
    assert found - known == set()
    assert {"stowkit-volume-snapshot", "stowkit-volume-pull"} <= found


def test_no_module_writes_an_action_name_instead_of_the_enum():
    names = {a.freezer_name for a in VolumeAction} | {"replicate", "synchronize"}
    offenders = []
    for path in _sources("corelib", "cli", "plugins"):
        rel = path.relative_to(REPO).as_posix()
        if rel == "corelib/volumejobs.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                offenders.append(f"{rel}:{node.lineno}: {node.value!r}")
    assert offenders == []


def test_names_in_a_schedule_and_in_the_catalog():
    assert [str(a) for a in volumejobs.SCHEDULED] == [
        "snapshot",
        "replicate",
        "purge",
        "synchronize",
    ]
    assert VolumeAction.SYNCHRONIZE.freezer_name == "stowkit-volume-sync"
    assert VolumeAction.from_freezer("stowkit-volume-replicate") is VolumeAction.REPLICATE
    assert VolumeAction.from_freezer("backup") is None


def test_pull_is_an_action_name_but_no_job_of_a_schedule():
    with pytest.raises(InvalidArgument, match="use snapshot, replicate:HOST"):
        parse_action("pull")
    assert decode({"action": "stowkit-volume-pull", "volume": "v1"}) is None


@pytest.mark.parametrize(
    "text", ["snapshot", "replicate:root@h1:2222", "purge:4h:1d", "synchronize:h1,h2"]
)
def test_a_job_written_parsed_and_stored_in_the_catalog_is_the_same_job(text):
    job = VolumeJob.parse("v1", text)
    assert job.text == text
    assert decode(job.freezer_action()) == job


def test_the_catalog_form_of_each_job():
    assert VolumeJob.parse("v1", "synchronize:a,b").freezer_action() == {
        "action": "stowkit-volume-sync",
        "volume": "v1",
        "hosts": ["a", "b"],
    }
    assert VolumeJob.parse("v1", "purge:1h:1d").freezer_action() == {
        "action": "stowkit-volume-purge",
        "volume": "v1",
        "pattern": "1h:1d",
    }


@pytest.mark.parametrize(
    "body",
    [
        {"action": "stowkit-volume-replicate", "volume": "v1", "host": "a;b"},
        {"action": "stowkit-volume-snapshot", "volume": "../x"},
        {"action": "stowkit-image-sync", "regions": []},
        "not a mapping",
    ],
)
def test_a_catalog_action_the_schedule_could_not_have_written_is_no_job(body):
    assert decode(body) is None


# -- run ------------------------------------------------------------------------------------


@pytest.fixture
def driver():
    d = FakeDriver()
    d.create_volume("v1")
    return d


def test_a_snapshot_job_says_the_snapshot_it_took(driver):
    done = volumejobs.run(driver, VolumeJob.parse("v1", "snapshot"))
    assert done.snapshot is not None and done.message == done.snapshot.name
    assert done.message.startswith("v1@")


class Sends(FakeDriver):
    def __init__(self, parent, already_there):
        super().__init__()
        self.parent, self.already_there = parent, already_there

    def replicate(self, volume, host):
        name = self.create_snapshot(volume).name
        return SendResult(name, host, self.parent, 10, self.already_there)


@pytest.mark.parametrize(
    "parent,already_there,how",
    [(None, False, "full"), ("v1@old", False, "incremental"), ("v1@old", True, "already there")],
)
def test_a_replicate_job_says_how_it_sent(parent, already_there, how):
    driver = Sends(parent, already_there)
    driver.create_volume("v1")
    done = volumejobs.run(driver, VolumeJob.parse("v1", "replicate:backup"))
    assert done.sent is not None
    assert done.message == f"{done.sent.snapshot} sent to backup ({how})"


def test_a_replicate_job_to_an_unreachable_host_raises(driver):
    driver.unreachable.add("backup")
    with pytest.raises(BackendUnavailable, match="connection refused"):
        volumejobs.run(driver, VolumeJob.parse("v1", "replicate:backup"))


def test_a_purge_job_says_what_it_deleted_and_kept(driver):
    for _ in range(3):
        driver.create_snapshot("v1")
    dry = volumejobs.run(driver, VolumeJob.parse("v1", "purge:1h:1d"), dry_run=True)
    assert dry.message == "would delete 2 snapshot(s), kept 1"
    assert len(driver.list_snapshots("v1")) == 3
    done = volumejobs.run(driver, VolumeJob.parse("v1", "purge:1h:1d"))
    assert done.message == "deleted 2 snapshot(s), kept 1"
    assert done.purged is not None and len(done.purged.deleted) == 2


def test_a_sync_job_says_its_snapshot_and_peers(driver):
    done = volumejobs.run(driver, VolumeJob.parse("v1", "synchronize:h1,h2"))
    assert done.synced is not None
    assert done.message == f"{done.synced.backup} taken, synchronized from h1,h2"


def test_a_sync_a_peer_refused_fails_naming_that_peer(driver):
    driver.unreachable.add("h2")
    with pytest.raises(BackendUnavailable, match=r"^sync of v1 failed: h2: unreachable$"):
        volumejobs.run(driver, VolumeJob.parse("v1", "synchronize:h1,h2"))


# -- the one per-volume lock -----------------------------------------------------------------


def test_a_second_job_of_a_volume_gets_locked_while_the_first_holds_it(driver):
    first_in, first_done = threading.Event(), threading.Event()
    outcome = {}

    def first():
        with driver.volume_lock("v1", wait=False):
            first_in.set()
            first_done.wait(10)

    holder = threading.Thread(target=first)
    holder.start()
    try:
        assert first_in.wait(10)

        def second():
            try:
                with driver.volume_lock("v1", wait=False):
                    outcome["second"] = "ran"
            except Locked as err:
                outcome["second"] = str(err)

        other = threading.Thread(target=second)
        other.start()
        other.join(10)
        assert outcome["second"] == "volume v1 is busy with another job"
        with driver.volume_lock("v2", wait=False):  # another volume is free
            pass
    finally:
        first_done.set()
        holder.join(10)
    with driver.volume_lock("v1", wait=False):  # free again once the first is done
        pass


def test_the_holder_of_a_volume_lock_may_take_it_again(driver):
    with driver.volume_lock("v1", wait=False), driver.volume_lock("v1", wait=False):
        volumejobs.run(driver, VolumeJob.parse("v1", "snapshot"))
