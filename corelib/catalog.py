"""The backup catalog: documents of five kinds, scoped per project.

A backend stores opaque JSON documents keyed by ``(project, kind, id)`` with a
version number for compare-and-swap updates; everything freezer-specific
(ids, schemas, job events, session tags) lives in :mod:`stowkit.corelib.catalogapi`,
above this interface, so every backend gets the same semantics.
"""

from __future__ import annotations

import abc
import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stowkit.corelib.driver import Driver
from stowkit.corelib.errors import Conflict, InvalidArgument

#: The document kinds the catalog keeps, as the REST API names them.
KINDS: tuple[str, ...] = ("backups", "clients", "jobs", "actions", "sessions")

#: The field that holds each kind's id inside its document.
ID_FIELDS: dict[str, str] = {
    "backups": "backup_id",
    "clients": "client_id",
    "jobs": "job_id",
    "actions": "action_id",
    "sessions": "session_id",
}

Document = dict[str, Any]

#: A search term: ``{"field": value}``; ``"_all"`` (or ``"*"``) as the field
#: means "the text appears anywhere in the document"; a plain field matches
#: that key at any depth, a dotted one is an exact path
#: (``backup_metadata.hostname``).
Term = Mapping[str, Any]


@dataclass
class Stored:
    """One document as stored, with its version (bumped by every write)."""

    doc: Document
    version: int


class VersionConflict(Conflict):
    """A compare-and-swap write lost a race; read again and retry."""


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise InvalidArgument(f"unknown document kind {kind!r} (known: {', '.join(KINDS)})")
    return kind


class CatalogCapability(enum.StrEnum):
    """Optional features a Catalog may declare in ``capabilities``: none yet.

    Searching and compare-and-swap updates are not capabilities: every
    Catalog implements :meth:`Catalog.search` and :meth:`Catalog.put` with
    ``version``, and the freezer API relies on both.
    """


class Catalog(Driver):
    """Documents by (project, kind, id); lists are ordered by creation, oldest first."""

    @abc.abstractmethod
    def sync(self) -> str:
        """Create or upgrade the storage schema; returns a line saying what was done."""

    @abc.abstractmethod
    def create(self, project: str, kind: str, doc_id: str, doc: Mapping[str, Any]) -> None:
        """Store a new document; :class:`AlreadyExists` when the id is taken."""

    @abc.abstractmethod
    def get_versioned(self, project: str, kind: str, doc_id: str) -> Stored:
        """The document and its version; :class:`NotFound` when missing."""

    def get(self, project: str, kind: str, doc_id: str) -> Document:
        return self.get_versioned(project, kind, doc_id).doc

    @abc.abstractmethod
    def put(
        self,
        project: str,
        kind: str,
        doc_id: str,
        doc: Mapping[str, Any],
        version: int | None = None,
    ) -> int:
        """Replace a document and return its new version.

        With ``version`` the write happens only if the stored version is still
        that one (else :class:`VersionConflict`), so read-modify-write loops are safe
        under concurrent writers.  :class:`NotFound` when missing.
        """

    @abc.abstractmethod
    def search(
        self,
        project: str | None,
        kind: str,
        limit: int = 10,
        offset: int = 0,
        match: Sequence[Term] = (),
        match_not: Sequence[Term] = (),
        central: bool = False,
    ) -> list[Document]:
        """Documents matching every ``match`` term and no ``match_not`` term.

        ``project=None`` searches every project (for admins: ``all_projects``).
        ``central`` (clients): the central clients of every project
        (``client.is_central`` true) are found with the project's own.
        A term's plain field name matches that key at any depth of the
        document (in nested objects and in objects inside lists), as
        freezer-api's search does; a dotted field is an exact path.
        """

    def search_json(
        self,
        project: str | None,
        kind: str,
        limit: int = 10,
        offset: int = 0,
        match: Sequence[Term] = (),
        match_not: Sequence[Term] = (),
        central: bool = False,
    ) -> list[str]:
        """Like :meth:`search` but each document already serialised (a fast path)."""
        found = self.search(project, kind, limit, offset, match, match_not, central)
        return [json.dumps(d) for d in found]

    @abc.abstractmethod
    def delete(self, project: str, kind: str, doc_id: str) -> None:
        """Remove a document; :class:`NotFound` when missing."""
