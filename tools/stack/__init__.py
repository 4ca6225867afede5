"""The test harness: real services for the functional tests, started by name.

Each module here that defines ``NAME`` is a service (see ``base.py`` for the
contract).  This package finds them and orders them; ``__main__`` is the CLI.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from types import ModuleType

# Order of ``all`` when dependencies leave a choice; modules not listed come last.
PREFERRED = ["btrfs", "docker", "sshd", "postgres", "keystone", "swift", "glance"]
_NOT_SERVICES = {"base", "__main__"}


class UnknownService(Exception):
    pass


def modules() -> dict[str, ModuleType]:
    """NAME -> module for every service module in this package."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name in _NOT_SERVICES or info.name.startswith("_"):
            continue
        try:
            mod = importlib.import_module(f"{__name__}.{info.name}")
        except Exception as exc:
            # One broken module must not take the whole harness down; its service
            # then counts as missing, which fails its tests under CI.
            print(f"warning: tools/stack/{info.name}.py: {exc!r}", file=sys.stderr)
            continue
        name = getattr(mod, "NAME", None)
        if isinstance(name, str):
            found[name] = mod
    return found


def find(name: str) -> ModuleType | None:
    return modules().get(name)


def resolve(names: list[str], with_requires: bool = True) -> list[ModuleType]:
    """The modules for ``names`` (empty or ``all`` = every one) in start order.

    ``REQUIRES`` are added (when ``with_requires``) and started first; ``AFTER``
    only orders services that are started in the same run.
    """
    mods = modules()
    if not names or "all" in names:
        wanted = set(mods)
    else:
        unknown = [n for n in names if n not in mods]
        if unknown:
            raise UnknownService(f"unknown service(s) {unknown}; known: {sorted(mods)}")
        wanted = set(names)
    if with_requires:
        todo = list(wanted)
        while todo:
            for req in getattr(mods[todo.pop()], "REQUIRES", []):
                if req not in mods:
                    raise UnknownService(f"required service {req!r} has no module")
                if req not in wanted:
                    wanted.add(req)
                    todo.append(req)
    rank = {n: i for i, n in enumerate(PREFERRED)}
    candidates = sorted(wanted, key=lambda n: (rank.get(n, len(rank)), n))
    order: list[str] = []
    while candidates:
        for name in candidates:
            mod = mods[name]
            before = list(getattr(mod, "REQUIRES", [])) + list(getattr(mod, "AFTER", []))
            if all(b not in candidates for b in before):
                order.append(name)
                candidates.remove(name)
                break
        else:
            raise UnknownService(f"dependency cycle among {candidates}")
    return [mods[n] for n in order]
