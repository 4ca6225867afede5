"""Run the benchmarks in bench/ one after the other, then print one table of all figures.

    python3 bench/run.py [--strict] [--report-only] [--results-dir DIR]
                         [--args NAME=ARGS]... [NAME...]

NAME is one of btrfs_plugin, catalog_api, catalog_scale, imagesync,
nbd_throughput, replication (default: all of them, in that order).  The
benchmarks need the harness services (``python3 -m tools.stack start btrfs
swift keystone glance postgres``) and install
their peers into venvs under .stack/venvs.  They run one at a time, so that
two never compete for the two cores, with the interpreter running this file:
use the one stowkit is installed in (``.venv/bin/python bench/run.py`` or
``tox -e bench``).

Each benchmark writes its figures to DIR/NAME.json (DIR is bench/results/ by
default, git-ignored; bench/figures.py describes the format).  Then this
prints::

    benchmark | figure | value | target | result

where result is PASS or FAIL against the figure's target, MISSING for a
figure that was not measured, SKIPPED for one left out on request (e.g.
``--args nbd_throughput=--skip-peers``) and ``-`` for a figure shown without a
target; below the table, why each figure is missing and which parts of which
benchmark could not run.

Exit status:

* 0: every benchmark ran and measured every figure.  A FAIL against a target
  is reported in the table and does not change the status: a target missed
  on this machine is a finding to report (doc/nbd.md discusses those), not a
  broken benchmark;
* 1: a benchmark failed to run (it exited non-zero, wrote no readable
  results, or could not run one of its parts) or a figure is MISSING; with
  ``--strict``, also any FAIL or SKIPPED figure;
* 2: usage (an unknown benchmark).

``--report-only`` prints the table from the results already in DIR without
running anything.  ``--args NAME=ARGS`` passes arguments to one benchmark,
e.g. ``--args "nbd_throughput=--size-mib 64 --repeat 1"`` for a quicker run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import shlex
import subprocess
import sys

import figures

HERE = pathlib.Path(__file__).resolve().parent
BENCHMARKS = (
    "btrfs_plugin",
    "catalog_api",
    "catalog_scale",
    "imagesync",
    "nbd_throughput",
    "replication",
)


@dataclasses.dataclass
class Run:
    """One benchmark's outcome: its exit status (None: not run now) and its document."""

    name: str
    returncode: int | None
    doc: dict | None
    problem: str = ""  # why there is no document


def load(name: str, path: pathlib.Path, returncode: int | None) -> Run:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return Run(name, returncode, None, f"no results written ({path})")
    except (OSError, ValueError) as err:
        return Run(name, returncode, None, f"unreadable results {path}: {err}")
    return Run(name, returncode, doc)


def collect(run: Run) -> tuple[list[dict], list[str], list[str]]:
    """(rows of the table, their statuses, the problems) of one benchmark."""
    problems = []
    if run.returncode not in (None, 0):
        problems.append(f"{run.name}: exited with status {run.returncode}")
    rows, statuses = [], []
    doc = run.doc
    if doc is not None:
        try:
            if not isinstance(doc.get("figures"), list) or doc.get("format") != figures.FORMAT:
                raise ValueError("not a format-1 results document")
            for fig in doc["figures"]:
                row = dict(fig, benchmark=run.name)
                statuses.append(figures.status(row))
                rows.append(row)
            problems += [f"{run.name}: {e}" for e in doc.get("errors", [])]
        except (ValueError, TypeError, AttributeError, KeyError) as err:
            rows, statuses, doc = [], [], None
            run.problem = f"unreadable results: {err}"
    if doc is None:
        rows = [{"benchmark": run.name, "figure": "(no figures)", "value": None,
                 "note": run.problem}]  # fmt: skip
        statuses = [figures.MISSING]
        problems.append(f"{run.name}: {run.problem}")
    elif not rows:
        problems.append(f"{run.name}: no figures in its results")
    return rows, statuses, problems


def aggregate(runs: list[Run], strict: bool = False) -> tuple[list[str], int]:
    """The report's lines and the exit status (see the module doc)."""
    rows, statuses, problems = [], [], []
    for run in runs:
        r, s, p = collect(run)
        rows += r
        statuses += s
        problems += p
    lines = figures.table(rows)
    missing = figures.notes(rows)
    if missing:
        lines += ["", "not measured:", *missing]
    if problems:
        lines += ["", "could not run:", *(f"  {p}" for p in problems)]
    code = figures.exit_code(statuses, len(problems), strict)
    counts = {s: statuses.count(s) for s in (figures.PASS, figures.FAIL, figures.MISSING,
                                             figures.SKIPPED)}  # fmt: skip
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    lines += ["", f"bench: {summary or 'no figures'}; exit {code}"]
    return lines, code


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/run.py", description=__doc__.splitlines()[0], add_help=True
    )
    parser.add_argument("names", nargs="*", metavar="NAME")
    parser.add_argument("--strict", action="store_true", help="a FAIL or SKIPPED exits 1 too")
    parser.add_argument("--report-only", action="store_true", help="only print DIR's table")
    parser.add_argument("--results-dir", type=pathlib.Path, default=figures.RESULTS_DIR)
    parser.add_argument("--args", action="append", default=[], metavar="NAME=ARGS")
    args = parser.parse_args(argv)
    names = args.names or list(BENCHMARKS)
    extra: dict[str, list[str]] = {}
    for item in args.args:
        name, _, text = item.partition("=")
        extra.setdefault(name, []).extend(shlex.split(text))
    unknown = [n for n in [*names, *extra] if n not in BENCHMARKS]
    if unknown:
        print(f"bench: unknown benchmark {unknown[0]!r} (have: {', '.join(BENCHMARKS)})")
        return 2
    if not args.report_only:
        try:
            figures.stowkit_command()
        except figures.NotRun as err:
            print(f"bench: {err}")
            return 1
    runs = []
    for name in names:
        path = args.results_dir / f"{name}.json"
        if args.report_only:
            runs.append(load(name, path, None))
            continue
        print(f"==== {name}", flush=True)
        path.unlink(missing_ok=True)  # never report a previous run's figures
        cmd = [
            sys.executable,
            str(HERE / f"{name}.py"),
            "--results",
            str(path),
            *extra.get(name, []),
        ]
        runs.append(load(name, path, subprocess.run(cmd).returncode))
    lines, code = aggregate(runs, args.strict)
    if not args.report_only:
        print("\n==== summary")
    print("\n".join(lines))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
