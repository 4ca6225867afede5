"""oslo.log for stowkit's long-running processes: the servers, the plugin, the agents.

A short command logs to stderr through cliff's console handler.  A service is
configured the way an operator configures every OpenStack service: oslo.log's
options in ``[DEFAULT]`` (``log_file``/``log_dir``, ``use_syslog``,
``use_journal``, ``use_json``, ``log_config_append``, ``debug``,
``default_log_levels``, the format strings), read by :func:`setup` once the
command knows it is one.  Configured with none of the destinations, a service
logs to stderr in oslo.log's format (oslo.log itself would fall back to stdout,
where servers print what scripts read, such as a port).

The options are registered with the core ones (:func:`register_opts`, from
``config.register_core_opts``): oslo.log declares some as command-line options,
which oslo.config accepts only before it parses, and a file naming
``log_file`` must not be an unknown option for any command.
"""

from __future__ import annotations

import logging

from oslo_config import cfg

# oslo.log's option declarations only: oslo_log.log costs every command ~20 ms at
# start-up, and its register_options() adds a stderr handler to the root logger.
from oslo_log import _options

from stowkit.corelib.errors import ConfigError

#: oslo.log's "product name" (syslog ident, the program name in journald).
DOMAIN = "stowkit"


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_cli_opts(_options.common_cli_opts)
    conf.register_cli_opts(_options.logging_cli_opts)
    conf.register_opts(_options.generic_log_opts)
    conf.register_opts(_options.log_opts)


def setup(conf: cfg.ConfigOpts, *, debug: bool = False, log_file: str | None = None) -> None:
    """Configure this process's logging from ``conf``'s oslo.log options.

    ``debug`` and ``log_file`` come from the command line (cliff's ``--debug``,
    ``-v -v`` and ``--log-file``) and win over the file.  A destination that
    cannot be opened, or a ``log_config_append`` file that does not load, is a
    ConfigError naming it: a service must not start without the log it was told
    to keep.
    """
    from oslo_log import log as oslo_log

    if debug:
        conf.set_override("debug", True)
    if log_file:
        conf.set_override("log_file", log_file)
    if not any(
        (conf.log_file, conf.log_dir, conf.use_syslog, conf.use_journal, conf.log_config_append)
    ):
        # oslo.log's fall-back is stdout, where servers print what scripts read
        conf.set_override("use_stderr", True)
    try:
        oslo_log.setup(conf, DOMAIN)
    except oslo_log.LogConfigError as exc:
        raise ConfigError(f"cannot load [DEFAULT] log_config_append: {exc}") from None
    except OSError as exc:
        where = exc.filename or conf.log_file or conf.log_dir
        raise ConfigError(f"cannot open the log {where}: {exc.strerror}") from None
    except ImportError as exc:  # use_journal without the systemd bindings
        raise ConfigError(f"cannot log as configured: {exc}") from None
    logging.getLogger(__name__).debug("logging set up by oslo.log")
