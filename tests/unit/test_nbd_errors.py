"""Backend failures reach NBD clients as what they were: ENOSPC, EPERM, EINVAL or EIO."""

from __future__ import annotations

import errno
import os

import pytest

from stowkit.corelib import config, registry
from stowkit.corelib.blockstore import StorageDenied, StorageFull
from stowkit.corelib.errors import BackendUnavailable, InvalidArgument
from stowkit.corelib.nbd import protocol as p
from tests.fakes.nbd import MemoryBlockStore, RawClient, ServerThread

OSIZE = 4096


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (StorageFull("swift: HTTP 413 quota exceeded"), p.ENOSPC),
        (OSError(errno.ENOSPC, "No space left on device"), p.ENOSPC),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), p.ENOSPC),
        (StorageDenied("swift refused: HTTP 403"), p.EPERM),
        (OSError(errno.EROFS, "Read-only file system"), p.EPERM),
        (InvalidArgument("object 3: 12 bytes given"), p.EINVAL),
        (BackendUnavailable("swift: HTTP 503"), p.EIO),
        (OSError("backend down"), p.EIO),
    ],
)
def test_a_failed_write_back_answers_with_what_it_was(failure, expected):
    store = MemoryBlockStore()
    store.create_device("one", 16 * OSIZE, OSIZE)
    store.fail_writes = failure
    t = ServerThread(store, ["one"], retry_attempts=2)
    try:
        for structured in (True, False):
            c = RawClient(t.port)
            c.greet()
            c.go("one", structured=structured)
            c.request(p.CMD_WRITE, 0, 4, flags=p.CMD_FLAG_FUA, data=b"data", cookie=1)
            assert c.reply()[:2] == (1, expected)
            c.request(p.CMD_FLUSH, cookie=2)  # the budget is spent now: same answer
            assert c.reply()[:2] == (2, expected)
            c.close()
    finally:
        store.fail_writes = False
        t.stop()


def test_the_local_backend_tells_no_space_and_refusals_apart(tmp_path, monkeypatch):
    conf = config.load_conf(overrides=[(None, "state_dir", str(tmp_path))])
    store = registry.load("blockstore", conf, "local")
    store.create_device("d", 4 * OSIZE, OSIZE)
    for code, cls in ((errno.ENOSPC, StorageFull), (errno.EACCES, StorageDenied)):

        def fail(*args, code=code, **kwargs):
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(os, "fsync", fail)
        with pytest.raises(cls):
            store.write_object("d", 0, b"x" * OSIZE)
        monkeypatch.undo()


def test_the_swift_backend_tells_quota_and_refusals_apart(tmp_path):
    swiftclient = pytest.importorskip("swiftclient")
    conf = config.load_conf(overrides=[(None, "state_dir", str(tmp_path))])
    store = registry.load("blockstore", conf, "swift")

    class Factory:
        def get(self):
            return object()

    store._factory = Factory()
    for status, cls in ((413, StorageFull), (507, StorageFull), (403, StorageDenied)):

        def put(conn, status=status):
            raise swiftclient.ClientException("no", http_status=status)

        with pytest.raises(cls):
            store._call("write object 0", put)

    def busy(conn):
        raise swiftclient.ClientException("busy", http_status=503)

    with pytest.raises(BackendUnavailable) as err:
        store._call("write object 0", busy)
    assert type(err.value) is BackendUnavailable
