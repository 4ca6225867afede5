# mod_wsgi script for stowkit's catalog API (see stowkit-catalog-apache.conf).
# Apache's SetEnv reaches the request, not os.environ: name the configuration here.
import os

os.environ.setdefault("STOWKIT_CONFIG_FILE", "/etc/stowkit/stowkit.conf")

from stowkit.corelib.catalogapi.wsgi import application  # noqa: E402, F401
