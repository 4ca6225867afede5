"""The Swift plugin imports python-swiftclient without python-keystoneclient."""

import subprocess
import sys


def test_swiftclient_is_imported_without_keystoneclient():
    code = (
        "import sys, stowkit.plugins.swift, swiftclient.client as c\n"
        "assert c.ksclient_v2 is None and c.ksclient_v3 is None\n"
        "assert 'keystoneclient' not in sys.modules\n"
        "import importlib.util\n"
        "if importlib.util.find_spec('keystoneclient'):\n"
        "    import keystoneclient  # still importable by whoever needs it\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
