"""`stowkit blockstore show` says what a writer could not store (local backend, in process)."""

from __future__ import annotations

import json
import logging

from stowkit.cli import app
from stowkit.corelib import blocklease, config
from stowkit.corelib.blockunstored import UnstoredRecord, write_local_record
from stowkit.plugins.local.blocks import LocalBlockStore


def show(conf, capsys, name="disk"):
    root = logging.getLogger()
    handlers = list(root.handlers)
    try:
        assert app.main(["--config-file", str(conf), "blockstore", "show", name, "-f", "json"]) == 0
    finally:
        root.handlers[:] = handlers
    return json.loads(capsys.readouterr().out)


def test_show_prints_the_newest_record_of_what_was_not_stored(tmp_path, capsys):
    conf_file = tmp_path / "stowkit.conf"
    conf_file.write_text(f"[DEFAULT]\nstate_dir = {tmp_path / 'state'}\n")
    conf = config.load_conf([str(conf_file)])
    store = LocalBlockStore(conf, "blockstore_local")
    store.create_device("disk", 1 << 20, 64 << 10)
    shown = show(conf_file, capsys)
    assert shown["unstored_objects"] is None and shown["unstored_recorded_in"] is None
    with blocklease.Lease(store, "disk", "a server", 60) as lease:
        assert lease.record_unstored([0, 1], 128 << 10, "old") == "device"
    path = write_local_record(
        store,
        UnstoredRecord("disk", (3, 7, 8, 9), 256 << 10, 2e9, "nbd on h (pid 1)", "lost the lock"),
    )
    shown = show(conf_file, capsys)
    assert shown["unstored_objects"] == 4 and shown["unstored_bytes"] == 256 << 10
    assert shown["unstored_ranges"] == "3, 7-9" and shown["unstored_at"] == "2033-05-18T03:33:20Z"
    assert shown["unstored_by"] == "nbd on h (pid 1)"
    assert shown["unstored_reason"] == "lost the lock"
    assert shown["unstored_recorded_in"] == path and path.startswith(str(tmp_path / "state"))
