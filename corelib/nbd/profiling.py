"""Profile the NBD server, every thread of it: ``STOWKIT_NBD_PROFILE=FILE``.

cProfile sees only the thread that enabled it, and the server's time is
split between the event loop and the backend threads (MD5, swiftclient,
copies).  With the variable set, each thread started after
:func:`start` gets a profiler of its own; :func:`stop` merges them all into
FILE (pstats format: ``python -m pstats FILE``), written when the server
stops.  For measuring only (bench, doc/nbd.md's profile); it costs speed.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import sys
import threading

ENV = "STOWKIT_NBD_PROFILE"

_profiles: list[cProfile.Profile] = []
_guard = threading.Lock()


def _new_profile() -> cProfile.Profile:
    profile = cProfile.Profile()
    with _guard:
        _profiles.append(profile)
    profile.enable()
    return profile


def _thread_hook(frame, event, arg):  # the first profile event of a new thread
    sys.setprofile(None)
    _new_profile()


def start() -> bool:
    """Profile this thread and every thread started from now on, if asked to."""
    if not os.environ.get(ENV):
        return False
    threading.setprofile(_thread_hook)
    _new_profile()
    return True


def stop() -> str | None:
    """Write every thread's profile, merged, to the file named by the variable."""
    path = os.environ.get(ENV)
    if not path:
        return None
    threading.setprofile(None)
    with _guard:
        profiles = list(_profiles)
    for profile in profiles:
        profile.disable()  # only stops this thread's; the others' stats are read as they are
    stats = None
    for profile in profiles:
        try:
            if stats is None:
                stats = pstats.Stats(profile)
            else:
                stats.add(profile)
        except TypeError:  # a thread's profiler that saw no call at all
            continue
    if stats is not None:
        stats.dump_stats(path)
    return path
