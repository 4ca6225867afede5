"""``python3 -m tools.stack install|start|stop|status|restart [SERVICE...|all]``.

No service name means ``all``: every module in tools/stack that defines ``NAME``.
``start`` is idempotent: a service whose recorded processes are all alive is left
alone, a stale record is cleaned up and the service started again.  ``stop`` only
touches what the record names.  ``status`` prints JSON and exits 3 when one of the
asked services is not running.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from tools import stack as services
from tools.stack import base


def alive(ctx: base.Context, mod, record: dict) -> bool:
    """Recorded pids alive, and the module's own check (e.g. still mounted) if it has one."""
    if not base.record_alive(record):
        return False
    check = getattr(mod, "alive", None)
    return check is None or bool(check(ctx, record))


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_install(ctx: base.Context, names: list[str]) -> int:
    mods = services.resolve(names, with_requires=True)
    t0 = time.monotonic()
    ctx.apt(sorted({pkg for mod in mods for pkg in base.service_packages(mod.NAME)}))
    for mod in mods:
        t = time.monotonic()
        mod.install(ctx)
        _say(f"{mod.NAME}: installed ({time.monotonic() - t:.1f}s)")
    _say(f"install done in {time.monotonic() - t0:.1f}s")
    return 0


def start_one(ctx: base.Context, mod) -> None:
    name = mod.NAME
    with ctx.lock(f"service-{name}"):
        record = ctx.state.get(name)
        if record is not None and alive(ctx, mod, record):
            _say(f"{name}: already running")
            return
        if record is not None:
            _say(f"{name}: stale record, cleaning up")
            stop_record(ctx, name, mod, record)
        t = time.monotonic()
        ctx.apt(base.service_packages(name))
        mod.install(ctx)
        before = set(ctx.spawned())
        try:
            record = mod.start(ctx)
        except BaseException:
            # Leave nothing half-started behind: kill what this start spawned.
            ctx.kill([pid for pid in ctx.spawned() if pid not in before], timeout=5)
            raise
        record.setdefault("pids", [])
        record["started"] = {str(p): base.proc_start_time(p) for p in record["pids"]}
        ctx.update_state(name, record)
        _say(f"{name}: started ({time.monotonic() - t:.1f}s)")


def stop_record(ctx: base.Context, name: str, mod, record: dict) -> None:
    if mod is not None:
        mod.stop(ctx, record)
    # Whatever the module did, no recorded process may survive a stop.
    ctx.kill(record.get("pids", []), record.get("started"))
    ctx.update_state(name, None)


def stop_one(ctx: base.Context, name: str) -> None:
    with ctx.lock(f"service-{name}"):
        record = ctx.state.get(name)
        if record is None:
            return
        t = time.monotonic()
        stop_record(ctx, name, services.find(name), record)
        _say(f"{name}: stopped ({time.monotonic() - t:.1f}s)")


def cmd_start(ctx: base.Context, names: list[str]) -> int:
    t0 = time.monotonic()
    for mod in services.resolve(names, with_requires=True):
        start_one(ctx, mod)
    _say(f"start done in {time.monotonic() - t0:.1f}s")
    return 0


def cmd_stop(ctx: base.Context, names: list[str]) -> int:
    if not names or "all" in names:
        # Everything recorded, known module or not, dependents first.
        known = [m.NAME for m in services.resolve([])]
        recorded = list(ctx.state)
        order = [n for n in known if n in recorded] + [n for n in recorded if n not in known]
    else:
        order = [m.NAME for m in services.resolve(names, with_requires=False)]
    for name in reversed(order):
        stop_one(ctx, name)
    return 0


def cmd_restart(ctx: base.Context, names: list[str]) -> int:
    cmd_stop(ctx, names)
    return cmd_start(ctx, names)


def cmd_status(ctx: base.Context, names: list[str]) -> int:
    state = ctx.state
    if not names or "all" in names:
        wanted = [m.NAME for m in services.resolve([])]
        wanted += [n for n in state if n not in wanted]
    else:
        wanted = names
    out = {}
    for name in wanted:
        record = state.get(name)
        if record is None:
            out[name] = {"running": False}
        else:
            out[name] = dict(record, running=alive(ctx, services.find(name), record))
    print(json.dumps({"dir": str(ctx.dir), "services": out}, indent=2, sort_keys=True))
    return 0 if all(v["running"] for v in out.values()) else 3


COMMANDS = {
    "install": cmd_install,
    "start": cmd_start,
    "stop": cmd_stop,
    "restart": cmd_restart,
    "status": cmd_status,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m tools.stack",
        description="Install, start and stop the real services the functional tests use.",
    )
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("services", nargs="*", help="service names, or all (the default)")
    args = parser.parse_args(argv)
    ctx = base.Context()
    try:
        return COMMANDS[args.command](ctx, args.services)
    except (base.StackError, services.UnknownService) as exc:
        _say(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
