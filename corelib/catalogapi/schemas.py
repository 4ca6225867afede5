"""JSON schemas of catalog documents, checked with ``jsonschema``.

Field names and types follow what freezer clients send (freezer-api's
documented documents); the checks are stricter where the reference let bad
data through: schedule dates, intervals and cron-like fields are validated,
jobs and sessions reject fields they do not know.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Mapping
from typing import Any

import jsonschema

from stowkit.corelib.errors import InvalidArgument

ID_PATTERN = r"^[A-Za-z0-9_.\-]{1,255}$"
_ID = re.compile(ID_PATTERN)
_WORD = r"^[\w-]+$"
_FQDN = r"([a-zA-Z\d]|[a-zA-Z\d][a-zA-Z\d-]{0,61}[a-zA-Z\d])(\.([a-zA-Z\d]|[a-zA-Z\d][a-zA-Z\d-]{0,61}[a-zA-Z\d]))*"  # noqa: E501
CLIENT_ID = rf"^(?:[\w-]+_)?{_FQDN}$"
_ISO = (
    r"^-?\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d"
    r"(\.\d+)?(Z|[+-]([01]\d|2[0-3]):[0-5]\d)?$"
)
_INTERVAL = r"^(continuous|\d+ +(weeks|days|hours|minutes|seconds))$"
_CRON = r"^[A-Za-z0-9*/,\- ]{1,64}$"

_int = {"type": "integer"}
_str = {"type": "string"}
_nullable_str = {"type": ["string", "null"]}
_id = {"type": "string", "pattern": ID_PATTERN}

SCHEDULE: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "time_created": _int,
        "time_started": _int,
        "time_ended": _int,
        "event": {"enum": ["", "start", "stop", "abort", "remove"]},
        # "" is what a start event leaves for the scheduler to fill in.
        "status": {
            "enum": ["", "completed", "stop", "scheduled", "running", "aborting", "removed"]
        },
        "result": {"enum": ["", "success", "fail", "aborted"]},
        "schedule_date": {"type": "string", "pattern": _ISO},
        "schedule_interval": {"type": "string", "pattern": _INTERVAL},
        "schedule_start_date": {"type": "string", "pattern": _ISO},
        "schedule_end_date": {"type": "string", "pattern": _ISO},
        "schedule_year": {"type": "string", "pattern": r"^\d{4}$"},
        **{
            f"schedule_{name}": {"type": "string", "pattern": _CRON}
            for name in ("month", "day", "week", "day_of_week", "hour", "minute", "second")
        },
        "current_pid": _int,
        # stowkit's agent claims each run here under If-Match (doc/agent.md):
        # run counter, the slot claimed, the owner and its last heartbeat.
        "claim": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "run": {"type": "integer", "minimum": 0},
                "due": _int,
                "since": _int,
                "heartbeat": _int,
                "owner": {"type": "string", "maxLength": 255},
                "message": {"type": "string", "maxLength": 2000},
            },
        },
    },
}

FREEZER_ACTION: dict[str, Any] = {
    "type": "object",
    "additionalProperties": True,
    "properties": {
        "action": {"type": "string", "pattern": _WORD},
        "mode": {"type": "string", "pattern": _WORD},
        "src_file": _str,
        "backup_name": _str,
        "container": _str,
        "restore_abs_path": _str,
    },
}

JOB_ACTION: dict[str, Any] = {
    "type": "object",
    "additionalProperties": True,
    "properties": {
        "freezer_action": FREEZER_ACTION,
        "max_retries": {"type": "integer", "minimum": 0},
        "max_retries_interval": {"type": "integer", "minimum": 0},
        "mandatory": {"type": "boolean"},
        "action_id": _id,
    },
}

_JOB_PROPS: dict[str, Any] = {
    "job_id": _id,
    "client_id": {"type": "string", "pattern": CLIENT_ID, "maxLength": 255},
    "user_id": _str,
    "project_id": _str,
    "description": _nullable_str,
    "job_actions": {"type": "array", "items": JOB_ACTION},
    "job_schedule": SCHEDULE,
    "action_defaults": FREEZER_ACTION,
    "session_id": {"type": ["string", "null"], "pattern": r"^[\w.\-]*$"},
    "session_tag": _int,
    "session_name": _nullable_str,
    # Set by the server for central jobs; a client's value is dropped, never stored.
    "user_credentials": {"type": "object"},
    "_version": _int,
}

JOB = {
    "type": "object",
    "additionalProperties": False,
    "properties": _JOB_PROPS,
    "required": ["job_actions", "client_id"],
}
JOB_PATCH = {"type": "object", "additionalProperties": False, "properties": _JOB_PROPS}

_SESSION_PROPS: dict[str, Any] = {
    "session_id": _id,
    "session_tag": {"type": "integer", "minimum": 0},
    "description": _str,
    "hold_off": {"type": "integer", "minimum": 0},
    "schedule": SCHEDULE,
    # A map {job_id: {...}} as stored, or (as freezer clients may send) a
    # list of objects each naming its job_id.
    "jobs": {
        "type": ["object", "array"],
        "items": {"type": "object"},
        "additionalProperties": {"type": "object"},
    },
    "status": {"enum": ["active", "running", "completed", ""]},
    "result": {"enum": ["", "success", "fail", "aborted"]},
    "time_start": _int,
    "time_end": _int,
    "time_started": _int,
    "time_ended": _int,
    "last_start": _int,
    "user_id": _str,
    "project_id": _str,
    "_version": _int,
}
SESSION = {"type": "object", "additionalProperties": False, "properties": _SESSION_PROPS}
SESSION_PATCH = SESSION

ACTION = {
    "type": "object",
    "additionalProperties": True,
    "properties": {
        "action_id": _id,
        "user_id": _str,
        "project_id": _str,
        "freezer_action": FREEZER_ACTION,
        "max_retries": {"type": "integer", "minimum": 0},
        "max_retries_interval": {"type": "integer", "minimum": 0},
        "mandatory": {"type": "boolean"},
        "action": {"type": "string", "pattern": _WORD},
        "mode": {"type": "string", "pattern": _WORD},
    },
}
ACTION_PATCH = ACTION

CLIENT = {
    "type": "object",
    "additionalProperties": True,
    "required": ["client_id"],
    "properties": {
        "client_id": {"type": "string", "pattern": CLIENT_ID, "maxLength": 255},
        "hostname": {"type": "string", "pattern": f"^{_FQDN}$"},
        "description": _str,
        "uuid": _str,
        "config_id": _str,
    },
}

#: The statuses a backup may have (freezer-api's list).
BACKUP_STATUSES = ["creating", "available", "error", "deleting", "deleted"]

#: A backup's metadata as a freezer agent posts it.  Typed only where
#: freezer-api types it: the agent sends "" for options it was not given
#: (``max_level``, ``always_level``, ...), and those are stored as sent.
#: Stricter than freezer-api: ``container``, ``hostname`` and an integer
#: ``time_stamp`` are always required, as the backup's id is made from them
#: (freezer-agent always sends them).
BACKUP = {
    "type": "object",
    "additionalProperties": True,
    "required": ["container", "hostname", "backup_name", "time_stamp"],
    "properties": {
        "container": {"type": "string", "minLength": 1},
        "hostname": {"type": "string", "minLength": 1},
        "backup_name": {"type": "string", "minLength": 1},
        "time_stamp": {"type": "integer", "minimum": 0},
        "status": {"enum": BACKUP_STATUSES},
        "backup_id": {"not": {}},
        "backup_metadata": {"not": {}},
    },
}
BACKUP_PATCH = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"status": {"enum": BACKUP_STATUSES}, "backup_metadata": {"type": "object"}},
}

_TERMS = {"type": "array", "items": {"type": "object", "minProperties": 1}}
SEARCH = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "match": _TERMS,
        "match_not": _TERMS,
    },
}

SESSION_ACTION = {
    "type": "object",
    "minProperties": 1,
    "maxProperties": 1,
    "additionalProperties": False,
    "properties": {
        action: {
            "type": "object",
            "additionalProperties": False,
            "required": ["job_id", "current_tag"],
            "properties": {
                "job_id": _id,
                # freezer's CLI sends the tag as it was typed: a string of digits.
                "current_tag": {
                    "anyOf": [
                        {"type": "integer", "minimum": 0},
                        {"type": "string", "pattern": r"^\d{1,12}$"},
                    ]
                },
                "result": {"enum": ["success", "fail", "aborted", ""]},
            },
        }
        for action in ("start", "end")
    },
}

JOB_EVENT = {
    "type": "object",
    "minProperties": 1,
    "maxProperties": 1,
    "additionalProperties": False,
    "properties": {event: {} for event in ("start", "stop", "abort", "remove")},
}

_validators: dict[int, jsonschema.protocols.Validator] = {}


def _validator(schema: Mapping[str, Any]) -> jsonschema.protocols.Validator:
    key = id(schema)
    if key not in _validators:
        jsonschema.Draft7Validator.check_schema(schema)
        _validators[key] = jsonschema.Draft7Validator(schema)
    return _validators[key]


def _where(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "the document"


def validate(schema: Mapping[str, Any], doc: Any, what: str = "document") -> None:
    """Raise :class:`InvalidArgument` naming the first offending field."""
    if not isinstance(doc, dict):
        raise InvalidArgument(f"the {what} must be a JSON object, not {type(doc).__name__}")
    error = jsonschema.exceptions.best_match(_validator(schema).iter_errors(doc))
    if error is None:
        return
    where = _where(error)
    if error.validator == "additionalProperties":
        known = error.schema.get("properties", {})
        extra = sorted(k for k in error.instance if k not in known)
        raise InvalidArgument(f"{what}: unknown field(s) {', '.join(map(repr, extra))} in {where}")
    if error.validator == "pattern":
        raise InvalidArgument(f"{what}: {where} has an invalid value {error.instance!r}")
    if error.validator == "not":
        raise InvalidArgument(f"{what}: {where} is set by the server and may not be given")
    if not error.absolute_path:
        raise InvalidArgument(f"{what}: {error.message}")
    raise InvalidArgument(f"{what}: {where}: {error.message}")


#: What a document may hold, so that both databases can store and search it:
#: objects and lists nested at most this deep ...
MAX_DEPTH = 32
#: ... strings (values and keys) of at most this many characters ...
MAX_STRING = 65536
#: ... and integers that fit the databases' 64-bit ones (PostgreSQL's jsonb
#: takes more, SQLite's JSON functions turn larger ones into floats).
MAX_INT = 2**63 - 1
#: A search has at most this many ``field: value`` terms (``match`` and
#: ``match_not`` together), each value at most MAX_SEARCH_VALUE characters
#: as JSON: freezer's scheduler sends one or two.
MAX_SEARCH_TERMS = 32
MAX_SEARCH_VALUE = 1024


def _at(path: tuple[Any, ...]) -> str:
    text = ".".join(str(p) for p in path) or "the document"
    # The path is the client's own input; shortened and escaped, never raw.
    return ascii(text[:80])[1:-1] if len(text) <= 80 else ascii(text[:80])[1:-1] + "..."


def _check_text(text: str, what: str, path: tuple[Any, ...], key: bool = False) -> None:
    name = "a key in " + _at(path) if key else _at(path)
    if len(text) > MAX_STRING:
        raise InvalidArgument(f"{what}: {name} is longer than {MAX_STRING} characters")
    if "\x00" in text:
        raise InvalidArgument(f"{what}: {name} contains a NUL character (\\u0000)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(
            f"{what}: {name} is not valid Unicode (a lone surrogate like \\ud800)"
        ) from None


def check_storable(doc: Any, what: str = "document") -> None:
    """Refuse what a database could not store or search (400), before anything else.

    Finite numbers, 64-bit integers, strings without NUL and of valid Unicode
    (no lone surrogates), keys the same, at most MAX_DEPTH levels of nesting,
    MAX_STRING characters per string.  Iterative: a deep document cannot
    exhaust the stack here.
    """
    stack: list[tuple[Any, int, tuple[Any, ...]]] = [(doc, 0, ())]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, dict | list):
            if depth >= MAX_DEPTH:
                raise InvalidArgument(f"{what}: nested deeper than {MAX_DEPTH} levels")
            if isinstance(value, dict):
                for key, item in value.items():
                    if not isinstance(key, str):
                        raise InvalidArgument(f"{what}: {_at(path)} has a key that is not text")
                    _check_text(key, what, path, key=True)
                    stack.append((item, depth + 1, (*path, key)))
            else:
                stack.extend((item, depth + 1, (*path, i)) for i, item in enumerate(value))
        elif isinstance(value, str):
            _check_text(value, what, path)
        elif value is None or isinstance(value, bool):
            continue
        elif isinstance(value, int):
            if not -MAX_INT - 1 <= value <= MAX_INT:
                raise InvalidArgument(f"{what}: {_at(path)} is an integer beyond 64 bits")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidArgument(
                    f"{what}: {_at(path)} is not a finite number (too large, or NaN)"
                )
        else:
            raise InvalidArgument(f"{what}: {_at(path)} is not a JSON value")


def check_search_terms(match: list[Any], match_not: list[Any]) -> None:
    """A search's bounds: MAX_SEARCH_TERMS terms, MAX_SEARCH_VALUE characters each (400)."""
    terms = [*match, *match_not]
    count = sum(len(t) if isinstance(t, dict) else 1 for t in terms)
    if count > MAX_SEARCH_TERMS:
        raise InvalidArgument(f"search: {count} terms, at most {MAX_SEARCH_TERMS} are allowed")
    for term in terms:
        if not isinstance(term, dict):
            continue
        check_storable(term, "search")
        for field, value in term.items():
            if len(field) > 255:
                raise InvalidArgument("search: a field name is longer than 255 characters")
            size = len(value) if isinstance(value, str) else len(_dumps(value))
            if size > MAX_SEARCH_VALUE:
                raise InvalidArgument(
                    f"search: the value of {_at((field,))} is longer than "
                    f"{MAX_SEARCH_VALUE} characters"
                )


def _dumps(value: Any) -> str:
    import json

    return json.dumps(value, separators=(",", ":"))


def check_id(value: str, what: str = "id") -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        value = value if isinstance(value, str) else repr(value)
        raise InvalidArgument(
            f"invalid {what} {value[:80]!r}: use 1 to 255 letters, digits, '_', '-' or '.'"
        )
    return value


# -- schedules: what a pattern cannot say --------------------------------------------
_RANGES = {
    "schedule_month": (1, 12),
    "schedule_day": (1, 31),
    "schedule_week": (1, 53),
    "schedule_day_of_week": (0, 6),
    "schedule_hour": (0, 23),
    "schedule_minute": (0, 59),
    "schedule_second": (0, 59),
}


def _parse_iso(text: str) -> datetime.datetime:
    value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    return value


def check_schedule(schedule: Mapping[str, Any], what: str = "job_schedule") -> None:
    """Dates real and ordered, a date or an interval not both, cron numbers in range."""
    for key in ("schedule_date", "schedule_start_date", "schedule_end_date"):
        if key in schedule:
            try:
                _parse_iso(schedule[key])
            except ValueError:
                raise InvalidArgument(f"{what}.{key}: {schedule[key]!r} is not a date") from None
    if "schedule_date" in schedule and "schedule_interval" in schedule:
        raise InvalidArgument(
            f"{what}: schedule_date (run once) and schedule_interval (repeat) exclude each other"
        )
    start, end = schedule.get("schedule_start_date"), schedule.get("schedule_end_date")
    if start and end and _parse_iso(end) <= _parse_iso(start):
        raise InvalidArgument(f"{what}: schedule_end_date must be after schedule_start_date")
    for key, (low, high) in _RANGES.items():
        text = schedule.get(key)
        if text is None:
            continue
        for number in re.findall(r"\d+", text):
            # After a '/' comes a step, which may exceed the range ("*/90" seconds is odd
            # but harmless); every other number must fall inside the field's range.
            if f"/{number}" in text:
                continue
            if not low <= int(number) <= high:
                raise InvalidArgument(
                    f"{what}.{key}: {number} is outside {low}..{high} in {text!r}"
                )
