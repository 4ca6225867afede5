"""The HTTP layer stowkit's REST services share (the catalog API, the GlanceSync API).

Plain WSGI, no framework.  One owner per rule:

* :mod:`~stowkit.corelib.web.responses`: status lines, the HTTP error raised by
  apps, and how an error of :mod:`stowkit.corelib.errors` becomes a JSON answer;
* :mod:`~stowkit.corelib.web.request`: what a request says (base URL, roles) and
  the bounded body reader;
* :mod:`~stowkit.corelib.web.keystone`: keystonemiddleware in front of an app,
  with the paths that need no token;
* :mod:`~stowkit.corelib.web.middleware`: oslo.middleware for a deployed API
  (health check, request ids, proxy headers, the body limit);
* :mod:`~stowkit.corelib.web.serving`: the options and the call that serve an
  API (workers, threads, timeouts) through :mod:`stowkit.corelib.wsgiserve`.
"""
