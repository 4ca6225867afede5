"""Catalog JSON schemas and the checks a schema cannot express."""

from __future__ import annotations

import pytest

from stowkit.corelib.catalogapi import schemas
from stowkit.corelib.catalogapi.service import backup_id, merge_defaults
from stowkit.corelib.errors import InvalidArgument


@pytest.mark.parametrize(
    "schema",
    [
        schemas.JOB,
        schemas.JOB_PATCH,
        schemas.SESSION,
        schemas.ACTION,
        schemas.CLIENT,
        schemas.BACKUP,
        schemas.BACKUP_PATCH,
        schemas.SEARCH,
        schemas.SESSION_ACTION,
        schemas.JOB_EVENT,
    ],
)
def test_schemas_are_valid_draft7(schema):
    schemas._validator(schema)


def test_messages_name_the_field():
    with pytest.raises(InvalidArgument, match=r"job_schedule.status"):
        schemas.validate(
            schemas.JOB, {"job_actions": [], "client_id": "h", "job_schedule": {"status": "x"}}
        )
    with pytest.raises(InvalidArgument, match=r"job_actions.0.max_retries"):
        schemas.validate(schemas.JOB, {"job_actions": [{"max_retries": "3"}], "client_id": "h"})
    with pytest.raises(InvalidArgument, match="set by the server"):
        schemas.validate(
            schemas.BACKUP,
            {
                "container": "c",
                "hostname": "h",
                "backup_name": "b",
                "time_stamp": 1,
                "backup_id": "x",
            },
        )
    with pytest.raises(InvalidArgument, match="unknown field"):
        schemas.validate(schemas.SESSION, {"sesion_tag": 1})


@pytest.mark.parametrize(
    "client_id", ["host", "host.example.org", "project_host.example", "a-b_c-d.e"]
)
def test_client_ids_accepted(client_id):
    schemas.validate(schemas.CLIENT, {"client_id": client_id})


@pytest.mark.parametrize("client_id", ["", "a b", "host/1", "-host", "a..b"])
def test_client_ids_rejected(client_id):
    with pytest.raises(InvalidArgument):
        schemas.validate(schemas.CLIENT, {"client_id": client_id})


@pytest.mark.parametrize(
    "schedule",
    [
        {"schedule_interval": "continuous"},
        {"schedule_interval": "10 minutes"},
        {"schedule_date": "2030-01-01T00:00:00Z"},
        {"schedule_day_of_week": "mon-fri", "schedule_hour": "*/2", "schedule_minute": "0,30"},
        {
            "schedule_start_date": "2030-01-01T00:00:00+02:00",
            "schedule_end_date": "2030-01-01T00:00:00Z",
        },
    ],
)
def test_good_schedules(schedule):
    schemas.validate(schemas.SCHEDULE, schedule)
    schemas.check_schedule(schedule)


def test_backup_id_is_url_safe():
    meta = {
        "container": "a/b",
        "hostname": "h",
        "backup_name": "n x",
        "time_stamp": 5,
        "curr_backup_level": 2,
    }
    assert backup_id(meta) == "a-b_h_n-x_5_2"
    assert schemas.check_id(backup_id(meta))


def test_merge_defaults_keeps_action_values():
    job = {"action_defaults": {"a": 1, "b": 1}, "job_actions": [{"freezer_action": {"b": 2}}, {}]}
    merge_defaults(job)
    assert job == {
        "job_actions": [{"freezer_action": {"a": 1, "b": 2}}, {"freezer_action": {"a": 1, "b": 1}}]
    }
