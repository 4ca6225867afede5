"""The Swift backend retries a failed object PUT (a fake Swift answering 503 once).

python-swiftclient retries a PUT only when it can rewind the body; plain bytes made
it give up at the first 503 (tests/functional/test_nbd_faults.py found it).
"""

from __future__ import annotations

import pytest

from stowkit.plugins.swift.store import SwiftBlockStore
from tests.fakes.swift import FakeSwift


def test_an_object_put_answered_503_is_sent_again(swift):
    FakeSwift.fail_next_puts = 2
    swift.write_object("dev", 3, b"\x07" * 4096)
    assert FakeSwift.puts == [("/v1/AUTH_t/dev/disk.part/00000003", 4096)] * 3


def test_a_lock_create_answered_503_is_sent_again(swift):
    FakeSwift.fail_next_puts = 1
    assert swift._control_create("dev", "stowkit.lock", b"{}") is True
    assert [p for p, _ in FakeSwift.puts] == ["/v1/AUTH_t/dev/stowkit.lock"] * 2


def test_a_setup_whose_settings_create_outlasts_the_settle_time_is_not_confirmed(monkeypatch):
    # Two setups race; ours lands after a rival could have read its own
    # settings back and gone on: ours must not claim the device, nor write
    # the container metadata (the settings every reader takes first).
    import time

    from stowkit.corelib.errors import Conflict

    store = SwiftBlockStore.__new__(SwiftBlockStore)
    objects, posted = {}, []

    class Opts:
        container_prefix = ""
        create_settle = 0.05

    def slow_create(device, key, data):
        time.sleep(0.06)  # longer than the settle time
        objects[key] = data
        return True

    monkeypatch.setattr(SwiftBlockStore, "opts", Opts(), raising=False)
    monkeypatch.setattr(store, "_head", lambda name: None)
    monkeypatch.setattr(store, "_call", lambda what, fn: posted.append(what))
    monkeypatch.setattr(store, "_control_create", slow_create)
    monkeypatch.setattr(store, "_control_get", lambda device, key: objects.get(key))
    with pytest.raises(Conflict, match="could not be confirmed"):
        store.create_device("dev", 1 << 20, 65536)
    assert not [what for what in posted if what.startswith("set the settings")]
