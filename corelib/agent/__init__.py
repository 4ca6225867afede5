"""``stowkit agent``: the host agent that runs the jobs the backup catalog stores.

It speaks freezer-scheduler's protocol to the catalog (register a client,
poll its jobs, report status and result) and runs each job's actions:
stowkit's own (``stowkit-volume-snapshot`` ...) through the library, freezer's
through ``freezer-agent``.  The catalog is reached with
:mod:`stowkit.corelib.catalogclient`.  Modules:

* :mod:`.triggers`: when a ``job_schedule`` fires (date, interval, cron, start/end);
* :mod:`.claims`:   what the agent does with a job it reads (events, claims, lost runs);
* :mod:`.sessions`: when a job of a freezer session runs (its schedule, joins, misses);
* :mod:`.actions`:  the action table and the backup documents actions record;
* :mod:`.runner`:   one run of a job's actions (order, mandatory, retries, abort);
* :mod:`.engine`:   the poll loop tying them together;
* :mod:`.options`:  the ``[agent]`` option group.
"""
