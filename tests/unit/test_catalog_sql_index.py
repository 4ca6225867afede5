"""The search tokens (plugins/sql/terms.py): the indexed searches give freezer's answers.

A ``match`` on a hot field (client_id, status, ...) with a scalar value is
answered from the ``terms`` column instead of walking the JSON; these tests
hold it to the same answers as the walk (``json_tree`` on SQLite) and as a
plain Python reading of freezer's rule (a member of that name, at any depth,
equal to the value, types counting), and check the upgrade from revision 0001.
"""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stowkit.corelib import config, registry
from stowkit.plugins.sql import terms
from stowkit.plugins.sql.catalog import SqlCatalog
from tests.fakes.catalog_search import expected, walked

BUDGET = settings(
    max_examples=60,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture()
def catalog(tmp_path):
    conf = config.load_conf(overrides=[(None, "state_dir", str(tmp_path))])
    cat = registry.load("catalog", conf)
    assert isinstance(cat, SqlCatalog)
    cat.sync()
    yield cat
    cat.close()


# Values that collide in interesting ways: 1, 1.0, true, "1", null, "", long strings.
SCALARS = st.sampled_from(
    [0, 1, 1.0, -0.0, 2.5, True, False, None, "", "1", "a", "completed", "x" * 300, "é\n\u001e"]
)
FIELDS = st.sampled_from(["client_id", "status", "hostname", "time_stamp", "other"])
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(FIELDS, inner, max_size=3),
    max_leaves=8,
)
DOCS = st.lists(st.dictionaries(FIELDS, VALUES, max_size=4), min_size=1, max_size=6)
# "other" is not a token field: a search naming it is built as a statement (tokens
# and the JSON walk together); one on token fields only runs as plain SQL.
TERMS = st.lists(st.dictionaries(FIELDS, SCALARS, min_size=1, max_size=2), max_size=2)


def load(catalog: SqlCatalog, docs: list[dict]) -> list[dict]:
    stored = []
    for n, doc in enumerate(docs):
        doc = dict(doc, n=n)
        catalog.create("p", "jobs", f"d{n}", doc)
        stored.append(doc)
    return stored


@BUDGET
@given(docs=DOCS, match=TERMS, match_not=TERMS)
def test_indexed_search_answers_as_the_json_walk_and_freezer(tmp_path_factory, docs, match,
                                                             match_not):  # fmt: skip
    conf = config.load_conf(overrides=[(None, "state_dir", str(tmp_path_factory.mktemp("s")))])
    catalog = registry.load("catalog", conf)
    catalog.sync()
    try:
        stored = load(catalog, docs)
        found = [d["n"] for d in catalog.search("p", "jobs", 100, 0, match, match_not)]
        assert found == expected(stored, match, match_not)
        assert found == walked(catalog, match, match_not)
    finally:
        catalog.close()


def test_the_poll_sees_nested_and_listed_fields_and_types(catalog):
    docs = load(
        catalog,
        [
            {"client_id": "c1", "job_schedule": {"status": "completed"}},
            {"client_id": "c1", "job_schedule": {"status": "scheduled"}},
            {"client_id": "c2", "job_schedule": {}},
            {"job_actions": [{"freezer_action": {"client_id": "c1"}}]},  # in a list
            {"client_id": ["c1"]},  # a list is not the string
            {"client_id": "c1", "status": 1},  # 1 is not "completed"
            {"time_stamp": 5.0},
            {"time_stamp": True},
        ],
    )

    def ids(match, match_not=()):
        return [d["n"] for d in catalog.search("p", "jobs", 100, 0, match, list(match_not))]

    poll = ids([{"client_id": "c1"}], [{"status": "completed"}])
    assert poll == [1, 3, 5] == expected(docs, [{"client_id": "c1"}], [{"status": "completed"}])
    assert ids([{"time_stamp": 5}]) == [6]  # 5 == 5.0, as freezer's Python compares
    assert ids([{"time_stamp": 1}]) == []  # true is not 1
    assert ids([{"time_stamp": True}]) == [7]


def test_writes_keep_the_tokens(catalog):
    catalog.create("p", "jobs", "j", {"client_id": "a", "job_schedule": {"status": "s"}})
    assert catalog.search("p", "jobs", 10, 0, [{"client_id": "a"}])
    catalog.put("p", "jobs", "j", {"client_id": "b", "job_schedule": {"status": "completed"}})
    assert not catalog.search("p", "jobs", 10, 0, [{"client_id": "a"}])
    assert catalog.search("p", "jobs", 10, 0, [{"client_id": "b"}])
    assert not catalog.search("p", "jobs", 10, 0, [{"client_id": "b"}], [{"status": "completed"}])


def test_long_values_are_digested_and_still_exact():
    long_a, long_b = "a" * 500, "a" * 499 + "b"
    assert len(terms.token("hostname", long_a)) < terms.MAX_TOKEN
    assert terms.token("hostname", long_a) != terms.token("hostname", long_b)
    assert terms.needle("hostname", long_a) in terms.terms_of({"x": [{"hostname": long_a}]})
    assert terms.terms_of({"other": 1}) == "\n"


def test_upgrade_from_0001_fills_the_tokens(tmp_path):
    from alembic import command

    conf = config.load_conf(overrides=[(None, "state_dir", str(tmp_path))])
    catalog = registry.load("catalog", conf)
    with catalog.engine.begin() as conn:
        command.upgrade(catalog.alembic_config(conn), "0001")
    assert catalog.current_revision() == "0001"
    with catalog.engine.begin() as conn:  # rows as a 0001 server wrote them
        for n in range(5):
            body = {"job_id": f"j{n}", "client_id": f"c{n % 2}", "job_schedule": {"status": "s"}}
            conn.execute(
                sa.text(
                    "INSERT INTO catalog_documents (project_id, kind, doc_id, version,"
                    " created_at, updated_at, body) VALUES ('p', 'jobs', :i, 1, 0, 0, :b)"
                ),
                {"i": f"j{n}", "b": json.dumps(body)},
            )
    assert "upgraded from 0001 to 0002" in catalog.sync()
    found = catalog.search("p", "jobs", 10, 0, [{"client_id": "c1"}], [{"status": "x"}])
    assert [d["job_id"] for d in found] == ["j1", "j3"]
    catalog.close()
