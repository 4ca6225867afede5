"""Docker volume plugin (legacy plugin protocol) over any VolumeDriver.

``app`` maps plugin requests to driver calls (mount IDs are counted by the
driver itself), ``server`` serves the app as HTTP on a unix socket.  Nothing here
imports a backend; ``stowkit plugin serve`` hands in the configured one.
"""

from __future__ import annotations

from oslo_config import cfg

GROUP = "docker_plugin"

opts = [
    cfg.StrOpt(
        "socket",
        default="/run/docker/plugins/stowkit.sock",
        help="Unix socket the plugin listens on; Docker finds legacy plugins at "
        "/run/docker/plugins/NAME.sock.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(opts, group=GROUP)
