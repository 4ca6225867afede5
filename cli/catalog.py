"""``stowkit catalog ...``: serve the backup catalog, migrate its database, inspect it."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from stowkit.cli.common import Command, Lister, ServeCommand, ShowOne, utc_time

if TYPE_CHECKING:
    from stowkit.corelib.catalogapi.service import CatalogService, Identity

# The API modules (jsonschema, the WSGI app) are imported inside the commands
# that use them: every other `stowkit` command would pay ~0.1 s at start-up.


class Serve(ServeCommand, Command):
    """Serve the freezer-compatible catalog API (cheroot, one process per worker)."""

    group = "catalog_api"
    no_auth_help = (
        "no Keystone: project from the URL (v2) or the default (v1), "
        "user from X-User-Id. Only for a single trusted host."
    )

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        from stowkit.corelib import notify
        from stowkit.corelib.catalogapi import server
        from stowkit.corelib.web import serving

        opts, bind, port = self.listen(parsed_args, server.register_opts)
        catalog = self.driver("catalog")
        if opts.auto_sync:
            self.app.stderr.write(catalog.sync() + "\n")
        # The API's one pipeline, the one gunicorn and uwsgi serve (wsgi.py).
        app = server.build_app(self.app.conf, catalog, self.auth(parsed_args))
        # The parent's connections must not be shared with the forked workers.
        catalog.close()
        n = parsed_args.workers or serving.workers(self.app.conf, server.GROUP)
        self.announce("catalog API", bind, port, f"{n} workers", parsed_args)
        # systemd (Type=notify) is told once every worker listens, and when it stops.
        serving.serve(
            self.app.conf, server.GROUP, app, bind, port, n, name=server.SERVER_NAME,
            ready=notify.ready, stopping=notify.stopping,
        )  # fmt: skip
        return 0


class DbSync(Command):
    """Create or upgrade the catalog database ([catalog_sql] connection)."""

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        print(self.driver("catalog").sync(), file=self.app.stdout)
        return 0


def _project_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--project",
        metavar="ID",
        help="project whose documents to use (default: [catalog_api] default_project)",
    )


class _Kind:
    kind = ""
    app: Any

    def _who(self, parsed_args: argparse.Namespace) -> Identity:
        from stowkit.corelib.catalogapi import server
        from stowkit.corelib.catalogapi.schemas import check_id
        from stowkit.corelib.catalogapi.service import Identity

        conf = self.app.conf
        server.register_opts(conf)
        project = parsed_args.project or conf[server.GROUP].default_project
        return Identity(check_id(project, "project id"), "stowkit-cli")

    def _service(self) -> CatalogService:
        from stowkit.corelib.catalogapi.service import CatalogService

        return CatalogService(self.app.driver("catalog"))


def _summary(kind: str, doc: dict[str, Any]) -> tuple[Any, ...]:
    if kind == "backups":
        meta = doc.get("backup_metadata", {})
        return (
            doc.get("backup_id"),
            meta.get("hostname", ""),
            meta.get("backup_name", ""),
            _time(meta.get("time_stamp")),
            meta.get("curr_backup_level", meta.get("level", "")),
        )
    if kind == "jobs":
        schedule = doc.get("job_schedule", {})
        return (
            doc.get("job_id"),
            doc.get("client_id", ""),
            doc.get("description", ""),
            len(doc.get("job_actions", [])),
            schedule.get("status", ""),
            schedule.get("event", ""),
            schedule.get("result", ""),
        )
    return (
        doc.get("session_id"),
        doc.get("session_tag", 0),
        doc.get("description", ""),
        doc.get("status", ""),
        doc.get("result", ""),
        len(doc.get("jobs", {})),
    )


def _time(value: Any) -> Any:
    """freezer's epoch ``time_stamp`` as the one time format; anything else as it is."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return utc_time(value)
    return value


# The documents' own field names (as `catalog ... show` prints them), counts
# named like volume list's snapshot_count.
_HEADERS = {
    "backups": ("backup_id", "hostname", "backup_name", "time_stamp", "level"),
    "jobs": ("job_id", "client_id", "description", "action_count", "status", "event", "result"),
    "sessions": ("session_id", "session_tag", "description", "status", "result", "job_count"),
}


def _list(kind: str) -> type[Lister]:
    class List(_Kind, Lister):
        __doc__ = f"List the {kind} of a project, oldest first."

        def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
            parser = super().get_parser(prog_name)
            _project_arg(parser)
            parser.add_argument("--limit", type=int, default=100, help="at most N (default 100)")
            parser.add_argument("--offset", type=int, default=0, help="skip the first N")
            parser.add_argument(
                "--match",
                metavar="FIELD=VALUE",
                action="append",
                default=[],
                help="only documents whose FIELD equals VALUE (a JSON value or a string); "
                "repeatable",
            )
            return parser

        def take_action(self, parsed_args: argparse.Namespace) -> tuple:
            from stowkit.corelib.errors import InvalidArgument

            match = []
            for item in parsed_args.match:
                field, sep, value = item.partition("=")
                if not sep:
                    raise InvalidArgument(f"--match {item!r}: use FIELD=VALUE")
                try:
                    match.append({field: json.loads(value)})
                except ValueError:
                    match.append({field: value})
            docs = self._service().list_docs(
                self._who(parsed_args), kind, parsed_args.limit, parsed_args.offset, match
            )
            return _HEADERS[kind], [_summary(kind, d) for d in docs]

    List.kind = kind
    return List


def _show(kind: str) -> type[ShowOne]:
    class Show(_Kind, ShowOne):
        __doc__ = f"Show one of a project's {kind} (nested values as JSON)."

        def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
            parser = super().get_parser(prog_name)
            _project_arg(parser)
            parser.add_argument("id", help=f"{kind[:-1]} id")
            return parser

        def take_action(self, parsed_args: argparse.Namespace) -> tuple:
            doc = self._service().get(self._who(parsed_args), kind, parsed_args.id)
            keys = sorted(doc)
            values = [
                json.dumps(doc[k], sort_keys=True) if isinstance(doc[k], dict | list) else doc[k]
                for k in keys
            ]
            return tuple(keys), tuple(values)

    return Show


def _delete(kind: str) -> type[Command]:
    class Delete(_Kind, Command):
        __doc__ = f"Delete one of a project's {kind}."

        def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
            parser = super().get_parser(prog_name)
            _project_arg(parser)
            parser.add_argument("id", help=f"{kind[:-1]} id")
            return parser

        def take_action(self, parsed_args: argparse.Namespace) -> int:
            self._service().delete(self._who(parsed_args), kind, parsed_args.id)
            return 0

    return Delete


COMMANDS: dict[str, type] = {
    "catalog serve": Serve,
    "catalog db-sync": DbSync,
}
for _kind in ("backups", "jobs", "sessions"):
    _noun = _kind[:-1]
    COMMANDS[f"catalog {_noun} list"] = _list(_kind)
    COMMANDS[f"catalog {_noun} show"] = _show(_kind)
    COMMANDS[f"catalog {_noun} delete"] = _delete(_kind)
