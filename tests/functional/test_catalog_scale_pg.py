"""The catalog's search index on the harness PostgreSQL: the poll uses it, the upgrade makes it.

* ``catalog db-sync`` of a database left at revision 0001 (documents written
  by a 0001 server) adds the search tokens to every row and the GIN index,
  and the searches then give freezer's answers (the same as the JSON walk);
* with 20,000 jobs of 200 clients and 20,000 backups (loaded with COPY, the
  tokens computed as the catalog computes them) and fresh statistics, the
  plan of freezer-scheduler's poll, and of a backup search on container and
  hostname, is a scan of that index, not of the table.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import sqlalchemy as sa

from stowkit.corelib import config, registry
from stowkit.plugins.sql.catalog import SqlCatalog
from stowkit.plugins.sql.tables import PG_TERMS_INDEX
from stowkit.plugins.sql.terms import terms_of
from tests.commands import STOWKIT
from tests.fakes.catalog_search import expected, walked
from tests.fakes.postgres import scratch_database

POLL_MATCH = [{"client_id": "c-7"}]
POLL_NOT = [{"status": "completed"}]


@pytest.fixture()
def database(service):
    with scratch_database(service("postgres"), "stowkit_scale") as url:
        yield url


def write_conf(tmp_path, url: str):
    conf = tmp_path / "stowkit.conf"
    conf.write_text(f"[DEFAULT]\nstate_dir = {tmp_path}\n[catalog_sql]\nconnection = {url}\n")
    return conf


def open_catalog(tmp_path, url: str) -> SqlCatalog:
    conf = config.load_conf([str(write_conf(tmp_path, url))])
    catalog = registry.load("catalog", conf)
    assert isinstance(catalog, SqlCatalog) and catalog.dialect == "postgresql"
    return catalog


def job(n: int, clients: int) -> dict:
    status = "completed" if n % 3 else "scheduled"
    return {
        "n": n,
        "job_id": f"j{n}",
        "client_id": f"c-{n % clients}",
        "job_schedule": {"status": status},
        "job_actions": [{"freezer_action": {"backup_name": f"b{n}", "container": "x"}}],
    }


def test_db_sync_upgrades_a_0001_database(tmp_path, database):
    from alembic import command

    catalog = open_catalog(tmp_path, database)
    with catalog.engine.begin() as conn:
        command.upgrade(catalog.alembic_config(conn), "0001")
    docs = [job(n, 10) for n in range(40)]
    docs += [{"n": 40, "job_actions": [{"freezer_action": {"client_id": "c-7"}}]},
             {"n": 41, "client_id": "c-7", "status": 1},
             {"n": 42, "client_id": ["c-7"]}]  # fmt: skip
    with catalog.engine.begin() as conn:  # as a 0001 server wrote them: no tokens column
        for d in docs:
            conn.execute(
                sa.text(
                    "INSERT INTO catalog_documents (project_id, kind, doc_id, version,"
                    " created_at, updated_at, body) VALUES ('p', 'jobs', :i, 1, 0, 0, :b)"
                ),
                {"i": f"d{d['n']}", "b": json.dumps(d, separators=(",", ":"))},
            )
    catalog.close()
    conf = write_conf(tmp_path, database)
    out = subprocess.run(
        [*STOWKIT, "--config-file", str(conf), "catalog", "db-sync"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "upgraded from 0001 to 0002" in out.stdout
    catalog = open_catalog(tmp_path, database)
    try:
        assert catalog.current_revision() == "0002"
        with catalog.engine.connect() as conn:
            names = conn.exec_driver_sql(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'catalog_documents'"
            ).scalars()
            assert PG_TERMS_INDEX in set(names)
        found = [d["n"] for d in catalog.search("p", "jobs", 1000, 0, POLL_MATCH, POLL_NOT)]
        assert found == expected(docs, POLL_MATCH, POLL_NOT) == walked(catalog, POLL_MATCH,
                                                                        POLL_NOT)  # fmt: skip
        assert 40 in found and 41 in found and 42 not in found
        # a write after the upgrade keeps the tokens
        catalog.put("p", "jobs", "d7", dict(docs[7], job_schedule={"status": "completed"}))
        assert 7 not in [d["n"] for d in catalog.search("p", "jobs", 1000, 0, POLL_MATCH,
                                                        POLL_NOT)]  # fmt: skip
    finally:
        catalog.close()


def plan(catalog: SqlCatalog, kind: str, limit: int, match: list, match_not: list) -> str:
    """The plans of both ways the catalog runs a search: plain SQL for one whose every
    term is on the tokens (the poll's, the backup list's), a built statement else."""
    sql, params = catalog.token_sql("p", kind, limit, 0, match, match_not)
    # The same search with a term off the tokens takes the statement builder.
    stmt = catalog._select("p", kind, limit, 0, [*match, {"other": None}], match_not)
    compiled = stmt.compile(dialect=catalog.engine.dialect)
    with catalog.engine.connect() as conn:
        plain = conn.exec_driver_sql("EXPLAIN " + catalog._sql(sql), params).scalars()
        built = conn.exec_driver_sql("EXPLAIN " + str(compiled), compiled.params).scalars()
        return "\n".join(plain) + "\n----\n" + "\n".join(built)


def test_the_poll_and_a_backup_search_use_the_index(tmp_path, database):
    import psycopg

    catalog = open_catalog(tmp_path, database)
    catalog.sync()
    clients, n_jobs, n_backups = 200, 20_000, 20_000
    jobs = [job(n, clients) for n in range(n_jobs)]
    with psycopg.connect(database) as conn:
        with conn.cursor().copy(
            "COPY catalog_documents (project_id, kind, doc_id, version, created_at,"
            " updated_at, body, terms) FROM STDIN"
        ) as copy:
            for d in jobs:
                copy.write_row(("p", "jobs", d["job_id"], 1, 0, 0, json.dumps(d), terms_of(d)))
            for b in range(n_backups):
                doc = {"backup_id": f"b{b}", "status": "available",
                       "backup_metadata": {"container": f"c{b % 20}", "hostname": f"h{b % 50}",
                                           "time_stamp": b}}  # fmt: skip
                copy.write_row(("p", "backups", f"b{b}", 1, 0, 0, json.dumps(doc),
                                terms_of(doc)))  # fmt: skip
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE catalog_documents")
    try:
        poll = plan(catalog, "jobs", 1000, POLL_MATCH, POLL_NOT)
        assert poll.count(PG_TERMS_INDEX) == 2, poll
        found = catalog.search("p", "jobs", 1000, 0, POLL_MATCH, POLL_NOT)
        assert [d["n"] for d in found] == expected(jobs, POLL_MATCH, POLL_NOT)
        assert len(found) == 33  # c-7 has 100 jobs, a third of them not completed
        search = [{"container": "c3"}, {"hostname": "h13"}]
        backups = plan(catalog, "backups", 100, search, [])
        assert backups.count(PG_TERMS_INDEX) == 2, backups
        hits = catalog.search("p", "backups", 100, 0, search)
        # c3 and h13: b % 100 == 63, 200 of them; the first 100 in creation order
        assert [d["backup_id"] for d in hits] == [f"b{b}" for b in range(63, 10_000, 100)]
    finally:
        catalog.close()
