"""The sql catalog backend on SQLite: migrations, versioned writes, searches in SQL."""

from __future__ import annotations

import threading

import pytest

from stowkit.corelib import config, registry
from stowkit.corelib.catalog import VersionConflict
from stowkit.corelib.catalogapi.service import CatalogService, Identity
from stowkit.corelib.errors import AlreadyExists, InvalidArgument, NotFound
from stowkit.plugins.sql.catalog import SqlCatalog, normalise_url


@pytest.fixture()
def catalog(tmp_path):
    conf = config.load_conf(overrides=[(None, "state_dir", str(tmp_path))])
    cat = registry.load("catalog", conf)
    assert isinstance(cat, SqlCatalog)
    cat.sync()
    yield cat
    cat.close()


def test_default_database_is_sqlite_under_state_dir(tmp_path, catalog):
    assert catalog.url == f"sqlite:///{tmp_path}/catalog.sqlite"
    assert (tmp_path / "catalog.sqlite").exists()
    assert "up to date" in catalog.sync()
    assert catalog.current_revision() == "0002"


def test_postgres_urls_use_psycopg3():
    assert normalise_url("postgresql://u@h:5/db") == "postgresql+psycopg://u@h:5/db"
    assert normalise_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"


def test_create_get_put_delete(catalog):
    catalog.create("p", "jobs", "j1", {"job_id": "j1", "n": 1})
    with pytest.raises(AlreadyExists):
        catalog.create("p", "jobs", "j1", {})
    catalog.create("q", "jobs", "j1", {"job_id": "j1", "n": 9})  # another project: no clash
    stored = catalog.get_versioned("p", "jobs", "j1")
    assert (stored.doc, stored.version) == ({"job_id": "j1", "n": 1}, 1)
    assert catalog.put("p", "jobs", "j1", {"n": 2}, version=1) == 2
    with pytest.raises(VersionConflict):
        catalog.put("p", "jobs", "j1", {"n": 3}, version=1)
    assert catalog.get("p", "jobs", "j1") == {"n": 2}
    assert catalog.get("q", "jobs", "j1")["n"] == 9
    catalog.delete("p", "jobs", "j1")
    with pytest.raises(NotFound):
        catalog.delete("p", "jobs", "j1")
    with pytest.raises(NotFound):
        catalog.put("p", "jobs", "j1", {})
    with pytest.raises(InvalidArgument):
        catalog.get("p", "nonsense", "x")


def test_search_terms(catalog):
    docs = [
        {"id": 0, "host": "a", "level": 0, "ok": True, "meta": {"os": "linux"}},
        {"id": 1, "host": "b", "level": 1, "ok": False, "meta": {"os": "bsd"}},
        {"id": 2, "host": "a", "level": 1, "note": "100% Done_now"},
    ]
    for d in docs:
        catalog.create("p", "actions", str(d["id"]), d)

    def ids(**kw):
        return [d["id"] for d in catalog.search("p", "actions", limit=50, **kw)]

    assert ids() == [0, 1, 2]
    assert ids(match=[{"host": "a"}]) == [0, 2]
    assert ids(match=[{"host": "a"}, {"level": 1}]) == [2]
    assert ids(match=[{"host": "a", "level": 0}]) == [0]
    assert ids(match=[{"ok": True}]) == [0]
    assert ids(match=[{"ok": False}]) == [1]
    assert ids(match=[{"meta.os": "bsd"}]) == [1]
    assert ids(match_not=[{"ok": True}]) == [1, 2]  # a missing field is "not equal"
    assert ids(match=[{"_all": "100% done"}]) == [2]
    assert ids(match=[{"_all": "%"}]) == [2]  # LIKE wildcards are literal
    assert ids(match=[{"level": 1}], match_not=[{"host": "b"}]) == [2]
    assert ids(match=[{"host": "zzz"}]) == []
    with pytest.raises(InvalidArgument):
        ids(match=[{"bad field": 1}])
    assert [d["id"] for d in catalog.search("p", "actions", limit=2, offset=1)] == [1, 2]


def test_backup_fields_are_searched_in_backup_metadata(catalog):
    catalog.create("p", "backups", "b1", {"backup_id": "b1", "backup_metadata": {"hostname": "x"}})
    catalog.create("p", "backups", "b2", {"backup_id": "b2", "backup_metadata": {"hostname": "y"}})
    assert [d["backup_id"] for d in catalog.search("p", "backups", match=[{"hostname": "y"}])] == [
        "b2"
    ]


def test_concurrent_session_starts_open_one_run(catalog):
    service = CatalogService(catalog)
    who = Identity("p", "u")
    job_ids = []
    for i in range(6):
        job_ids.append(service.create(who, "jobs", {"job_actions": [], "client_id": f"host{i}"}))
    sid = service.create(who, "sessions", {"hold_off": 0})
    for job_id in job_ids:
        service.session_add_job(who, sid, job_id)
    results: list[dict] = []
    barrier = threading.Barrier(len(job_ids))

    def start(job_id: str) -> None:
        barrier.wait()
        body = {"start": {"job_id": job_id, "current_tag": 0}}
        results.append(service.session_action(who, sid, body))

    threads = [threading.Thread(target=start, args=(j,)) for j in job_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    outcomes = sorted(r["result"] for r in results)
    assert outcomes == ["out of sync"] * (len(job_ids) - 1) + ["success"]
    assert catalog.get("p", "sessions", sid)["session_tag"] == 1
