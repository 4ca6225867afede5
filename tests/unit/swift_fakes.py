"""A SwiftBlockStore talking to a fake Swift (an http.server handler) on loopback."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator

from oslo_config import cfg

from stowkit.plugins.swift.store import SwiftBlockStore


@contextlib.contextmanager
def swift_store(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[SwiftBlockStore]:
    """A store (tempauth, 3 quick retries) whose requests ``handler`` answers."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    conf = cfg.ConfigOpts()
    store = SwiftBlockStore(conf, "blockstore_swift")
    port = server.server_address[1]
    for key, value in (("auth_url", f"http://127.0.0.1:{port}/auth/v1.0"), ("user", "t:u"),
                       ("key", "k"), ("retries", 3), ("max_backoff", 0.1)):  # fmt: skip
        conf.set_override(key, value, "blockstore_swift")
    conf([], default_config_files=[])
    try:
        yield store
    finally:
        store.close()
        server.shutdown()
        server.server_close()
        thread.join(10)
