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
    """Documents by (project, kind, id); lists are ordered by creation, oldest first.

    Lifecycle: the registry builds one catalog per configuration
    (``Catalog(conf, group)``); building it opens no connection.
    :meth:`sync` creates or upgrades the schema once (``stowkit catalog
    db-sync``) before documents are stored; every other method may then be
    called from many threads at once (the REST API serves requests in
    threads).  :meth:`Driver.close` releases the connection pool.

    ``kind`` is always one of :data:`KINDS` (else
    :class:`~stowkit.corelib.errors.InvalidArgument`); documents of one
    project are invisible to another.  Every method may also raise
    :class:`~stowkit.corelib.errors.BackendUnavailable` when the database
    cannot be reached or holds no catalog tables yet (run :meth:`sync`), and
    :class:`~stowkit.corelib.errors.ConfigError` when the configured
    connection cannot be used at all.
    """

    @abc.abstractmethod
    def sync(self) -> str:
        """Create or upgrade the storage schema; safe to run again.

        :returns: one line saying what was done (created, upgraded from which
            revision, or already current).
        :raises BackendUnavailable: the database cannot be reached.
        """

    @abc.abstractmethod
    def create(self, project: str, kind: str, doc_id: str, doc: Mapping[str, Any]) -> None:
        """Store a new document at version 1.

        :param project: the owning project.
        :param kind: one of :data:`KINDS`.
        :param doc_id: the document's id, unique per (project, kind).
        :param doc: a JSON-serialisable mapping, stored as given.
        :raises AlreadyExists: the id is taken in that project and kind.
        :raises InvalidArgument: unknown kind.
        """

    @abc.abstractmethod
    def get_versioned(self, project: str, kind: str, doc_id: str) -> Stored:
        """A document with its version, for a later :meth:`put` with ``version``.

        :returns: the :class:`Stored` document.
        :raises NotFound: no such document in that project.
        :raises InvalidArgument: unknown kind.
        """

    def get(self, project: str, kind: str, doc_id: str) -> Document:
        """A document without its version (see :meth:`get_versioned`).

        :raises NotFound: no such document in that project.
        :raises InvalidArgument: unknown kind.
        """
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
        """Replace a document.

        :param version: when given, the write happens only if the stored
            version is still that one, so read-modify-write loops are safe
            under concurrent writers.
        :returns: the document's new version (the old one plus one).
        :raises VersionConflict: the stored version is not ``version``.
        :raises NotFound: no such document in that project.
        :raises InvalidArgument: unknown kind.
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

        A term's plain field name matches that key at any depth of the
        document (in nested objects and in objects inside lists), as
        freezer-api's search does; a dotted field is an exact path; ``_all``
        matches the text anywhere (see :data:`Term`).

        :param project: the project searched; None searches every project
            (for admins: ``all_projects``).
        :param central: (clients) the central clients of every project
            (``client.is_central`` true) are found with the project's own.
        :param limit: at most this many documents.
        :param offset: skip this many matching documents first.
        :returns: the documents, oldest first.
        :raises InvalidArgument: unknown kind or a malformed term.
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
        """Like :meth:`search`, each document already serialised to JSON.

        A backend that stores JSON text overrides it to skip a parse and a
        dump per document (the REST API's listings use it).
        """
        found = self.search(project, kind, limit, offset, match, match_not, central)
        return [json.dumps(d) for d in found]

    @abc.abstractmethod
    def delete(self, project: str, kind: str, doc_id: str) -> None:
        """Remove a document.

        :raises NotFound: no such document in that project.
        :raises InvalidArgument: unknown kind.
        """
