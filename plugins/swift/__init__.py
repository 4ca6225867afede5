"""Swift backends (block devices on Swift).

python-swiftclient imports python-keystoneclient at import time whenever it is
installed (keystonemiddleware, in the ``keystone`` extra, brings it along):
0.45 s on every stowkit command that touches Swift.  stowkit authenticates
through keystoneauth1 sessions and never takes swiftclient's keystoneclient
path, so swiftclient is first imported here with keystoneclient hidden; it
then falls back as if keystoneclient were absent.
"""

import sys


def _import_swiftclient() -> None:
    if "swiftclient.client" in sys.modules or "keystoneclient" in sys.modules:
        return  # imported already, or keystoneclient is loaded anyway: nothing to save
    sys.modules["keystoneclient"] = None  # type: ignore[assignment]  # import raises ImportError
    try:
        import swiftclient.client  # noqa: F401
    finally:
        del sys.modules["keystoneclient"]


_import_swiftclient()
