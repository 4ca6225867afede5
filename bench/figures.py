"""The figures a benchmark measured, as one JSON document, and their table of targets.

Each benchmark in bench/ declares its figures before it measures anything (a
name, a unit and, for a figure with a target, the target and the comparison
that passes), fills in the values it measures, and records every part that
could not run: a harness service that is not running, a client command that
is not installed, a peer that did not start.  At the end it prints its
figures against their targets, writes the document (``--results``, by
default ``bench/results/NAME.json``; bench/results/ is git-ignored) and
exits with :func:`exit_code`:

* 1 when a part could not run or a figure was not measured (MISSING);
* 0 otherwise, also when a figure misses its target (FAIL is printed, and
  is a finding, not a breakage) or was skipped on request (SKIPPED, e.g.
  ``--skip-peers``);
* with ``--strict`` a FAIL or a SKIPPED figure exits 1 too.

bench/run.py reads the same documents and prints one table for all.  The
document (format 1)::

    {"format": 1, "benchmark": "nbd_throughput",
     "errors": ["nbdkit S3 plugin: nbdkit not found on PATH (Debian package nbdkit)"],
     "figures": [{"figure": "write: stowkit / raw 1 object", "value": 0.61, "unit": "x",
                  "target": 0.5, "direction": ">=", "skipped": false, "note": ""}, ...]}

``value`` is null for a figure that was not measured (``note`` says why).
``direction`` is one of ``>=``, ``>``, ``<=``, ``<``: the figure passes when
``value DIRECTION target`` holds.  A figure without a target (``target`` and
``direction`` null) is shown for context; it cannot FAIL but it can be
MISSING.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import operator
import os
import pathlib
import shutil
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS_DIR = HERE / "results"
FORMAT = 1

DIRECTIONS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
PASS, FAIL, MISSING, SKIPPED, INFO = "PASS", "FAIL", "MISSING", "SKIPPED", "-"


class NotRun(Exception):
    """A part of a benchmark could not run; the message says why."""


# -- judging figures ----------------------------------------------------------------------


def status(figure: dict) -> str:
    """PASS, FAIL, MISSING, SKIPPED, or INFO (``-``) for a figure without a target."""
    value = figure.get("value")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return SKIPPED if figure.get("skipped") else MISSING
    target, direction = figure.get("target"), figure.get("direction")
    if target is None:
        return INFO
    if direction not in DIRECTIONS:
        raise ValueError(f"figure {figure.get('figure')!r}: unknown direction {direction!r}")
    return PASS if DIRECTIONS[direction](value, target) else FAIL


def exit_code(statuses: list[str], problems: int, strict: bool = False) -> int:
    """1 for a problem (a part that did not run) or a MISSING figure; see the module doc."""
    if problems or MISSING in statuses:
        return 1
    if strict and (FAIL in statuses or SKIPPED in statuses):
        return 1
    return 0


def fmt_number(value: float, unit: str = "") -> str:
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    text = f"{value:.{digits}f}"
    return f"{text}x" if unit == "x" else f"{text} {unit}" if unit else text


def fmt_value(figure: dict) -> str:
    value = figure.get("value")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt_number(value, figure.get("unit", ""))


def fmt_target(figure: dict) -> str:
    if figure.get("target") is None:
        return "-"
    unit = figure.get("unit", "")
    target = f"{figure['target']:g}"
    return f"{figure['direction']} {target}{'x' if unit == 'x' else f' {unit}' if unit else ''}"


def table(rows: list[dict]) -> list[str]:
    """``benchmark | figure | value | target | result`` for rows that carry ``benchmark``."""
    head = ("benchmark", "figure", "value", "target", "result")
    cells = [head] + [
        (r["benchmark"], r["figure"], fmt_value(r), fmt_target(r), status(r)) for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    right = (False, False, True, True, False)

    def line(c):
        return " | ".join(
            (x.rjust(w) if r else x.ljust(w)) for x, w, r in zip(c, widths, right, strict=True)
        ).rstrip()

    return [line(head), "-+-".join("-" * w for w in widths)] + [line(c) for c in cells[1:]]


def notes(rows: list[dict]) -> list[str]:
    """One line per figure that is MISSING or SKIPPED, with the reason."""
    out = []
    for r in rows:
        s = status(r)
        if s in (MISSING, SKIPPED):
            out.append(f"  {s} {r['benchmark']}: {r['figure']}: {r.get('note') or 'not measured'}")
    return out


# -- what a benchmark needs ---------------------------------------------------------------


def _package_of(command: str) -> str:
    """The Debian package tools/commands.txt names for ``command`` (the one table)."""
    spec = importlib.util.spec_from_file_location("_stowkit_commands", REPO / "tools/commands.py")
    table = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))
    spec.loader.exec_module(table)
    row = table.commands().get(command)
    return f"Debian package {row.package}" if row else "not in tools/commands.txt"


def need(command: str) -> str:
    """The path of an external command, or NotRun naming the Debian package that has it."""
    path = shutil.which(command)
    if path is None:
        raise NotRun(
            f"{command} not found on PATH ({_package_of(command)}; tools/test-all installs"
            " what the table names)"
        )
    return path


def stowkit_command() -> list[str]:
    """stowkit's CLI in the interpreter running the benchmark, never a `stowkit` on PATH."""
    try:
        spec = importlib.util.find_spec("stowkit.cli.app")
    except ImportError:
        spec = None
    if spec is None:
        raise NotRun(
            f"stowkit is not importable by {sys.executable}: run the benchmarks with the"
            " interpreter stowkit is installed in (.venv/bin/python bench/run.py, tox -e bench)"
        )
    return [sys.executable, "-m", "stowkit.cli.app"]


def service(name: str) -> dict:
    """The harness record of a running service (``python -m tools.stack status NAME``)."""
    proc = subprocess.run(
        [sys.executable, "-m", "tools.stack", "status", name],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        record = json.loads(proc.stdout)["services"][name]
    except (ValueError, KeyError, TypeError):
        tail = (proc.stderr or proc.stdout).strip()[-300:]
        raise NotRun(f"harness status {name} failed (exit {proc.returncode}): {tail}") from None
    if not record.get("running"):
        raise NotRun(f"{name} is not running: python3 -m tools.stack start {name}")
    return record


def describe(err: BaseException) -> str:
    """One line for a failure: what ran, how it ended, the end of what it said."""
    if isinstance(err, subprocess.CalledProcessError):
        cmd = err.cmd if isinstance(err.cmd, list | tuple) else [err.cmd]
        name = next((str(c) for c in cmd if c != "timeout" and not str(c).isdigit()), "")
        said = err.stderr or err.stdout or b""
        if isinstance(said, bytes):
            said = said.decode(errors="replace")
        timed_out = err.returncode == 124 and cmd[0] == "timeout"
        how = "timed out" if timed_out else f"exited {err.returncode}"
        tail = " ".join(said.split())[-300:]
        return f"{pathlib.Path(name).name} {how}" + (f": {tail}" if tail else "")
    if isinstance(err, subprocess.TimeoutExpired):
        return f"{pathlib.Path(str(err.cmd[0])).name} timed out after {err.timeout:.0f} s"
    if isinstance(err, FileNotFoundError) and err.filename:
        return f"{err.filename} not found"
    if isinstance(err, NotRun):
        return str(err)
    return f"{type(err).__name__}: {err}"[:400]


# -- one benchmark's results ---------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser, benchmark: str) -> None:
    parser.add_argument(
        "--results",
        type=pathlib.Path,
        default=RESULTS_DIR / f"{benchmark}.json",
        help="where to write the figures as JSON (default: %(default)s)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 also when a figure misses its target"
    )


class Results:
    """The figures of one benchmark run, declared first, filled in as they are measured."""

    def __init__(self, benchmark: str) -> None:
        self.benchmark = benchmark
        self.figures: dict[str, dict] = {}
        self.errors: list[str] = []

    def declare(
        self,
        figure: str,
        unit: str = "x",
        target: float | None = None,
        direction: str | None = None,
    ) -> str:
        if (target is None) != (direction is None) or (
            direction is not None and direction not in DIRECTIONS
        ):
            raise ValueError(f"{figure}: target {target!r} with direction {direction!r}")
        self.figures[figure] = {
            "figure": figure,
            "value": None,
            "unit": unit,
            "target": target,
            "direction": direction,
            "skipped": False,
            "note": "",
        }
        return figure

    def set(self, figure: str, value: float | None, why_not: str = "") -> None:
        """Record a value; None (or NaN) leaves the figure missing, with ``why_not``."""
        fig = self.figures[figure]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            fig["value"] = None
            fig["note"] = fig["note"] or why_not
        else:
            fig["value"] = float(value)
            fig["note"] = ""

    def ratio(self, figure: str, num: float | None, den: float | None, why_not: str = "") -> None:
        if num is None or den is None or not den or math.isnan(num) or math.isnan(den):
            self.set(figure, None, why_not)
        else:
            self.set(figure, num / den)

    def missing(self, figure: str, why: str) -> None:
        if self.figures[figure]["value"] is None and not self.figures[figure]["note"]:
            self.figures[figure]["note"] = why

    def skip(self, figure: str, why: str) -> None:
        self.figures[figure].update(value=None, skipped=True, note=why)

    def error(self, part: str, why: str) -> None:
        line = f"{part}: {why}"
        if line not in self.errors:
            self.errors.append(line)
            print(f"{self.benchmark}: {line}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def part(self, name: str, figures: tuple[str, ...] | list[str] = ()):
        """Run a part; if it raises, say so and leave its figures missing.  Yields nothing."""
        try:
            yield
        except Exception as err:
            why = describe(err)
            self.error(name, why)
            for f in figures:
                self.missing(f, f"{name}: {why}")

    def document(self) -> dict:
        figs = []
        for fig in self.figures.values():
            if fig["value"] is None and not fig["note"]:
                fig = dict(fig, note="not measured")
            figs.append(fig)
        return {
            "format": FORMAT,
            "benchmark": self.benchmark,
            "errors": list(self.errors),
            "figures": figs,
        }

    def finish(self, args: argparse.Namespace) -> int:
        """Write the document, print the figures against their targets, return the exit code."""
        doc = self.document()
        path = pathlib.Path(args.results)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        tmp.replace(path)
        rows = [dict(f, benchmark=self.benchmark) for f in doc["figures"]]
        print()
        print("\n".join(table(rows)))
        for line in notes(rows):
            print(line)
        for line in self.errors:
            print(f"  could not run: {line}")
        code = exit_code([status(r) for r in rows], len(self.errors), args.strict)
        print(f"{self.benchmark}: results in {path}; exit {code}")
        return code
