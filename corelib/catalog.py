"""The backup catalog: documents of five kinds, scoped per project."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any

from corelib.driver import Driver

#: The document kinds the catalog keeps, as the REST API names them.
KINDS: tuple[str, ...] = ("backups", "clients", "jobs", "actions", "sessions")

Document = dict[str, Any]


class Catalog(Driver):
    """Documents by (project, kind, id)."""

    @abc.abstractmethod
    def create(self, project: str, kind: str, doc: Mapping[str, Any]) -> str: ...

    @abc.abstractmethod
    def get(self, project: str, kind: str, doc_id: str) -> Document: ...

    @abc.abstractmethod
    def search(
        self,
        project: str,
        kind: str,
        limit: int = 10,
        offset: int = 0,
        match: Sequence[Mapping[str, Any]] = (),
        match_not: Sequence[Mapping[str, Any]] = (),
    ) -> list[Document]: ...

    @abc.abstractmethod
    def replace(self, project: str, kind: str, doc_id: str, doc: Mapping[str, Any]) -> None: ...

    @abc.abstractmethod
    def update(self, project: str, kind: str, doc_id: str, patch: Mapping[str, Any]) -> Document:
        ...

    @abc.abstractmethod
    def delete(self, project: str, kind: str, doc_id: str) -> None: ...
