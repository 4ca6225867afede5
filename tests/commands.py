"""How the tests run stowkit's CLI: with the interpreter that runs the tests.

Never ``stowkit`` by name: whatever PATH finds first (another venv, an older
install, nothing at all in a scrubbed environment) is not necessarily the code
under test.  ``sys.executable -m stowkit.cli.app`` is the ``stowkit`` console
script of the environment pytest runs in.
"""

from __future__ import annotations

import sys

#: argv prefix of ``stowkit``: ``[*STOWKIT, "--config-file", conf, "blockstore", "list"]``
STOWKIT = [sys.executable, "-m", "stowkit.cli.app"]
