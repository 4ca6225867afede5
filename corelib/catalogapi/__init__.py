"""The catalog's REST API: a freezer-api compatible WSGI app over any Catalog.

``schemas`` validates documents, ``service`` holds the semantics (ids,
defaults, job events, sessions, central clients) within a resolved ``Scope``,
``policy`` decides who may do what, ``app`` routes HTTP requests (v1 and v2)
to the service after asking the policy once, ``trusts`` makes the Keystone
trusts of centralized jobs, ``server`` builds the one pipeline that ``catalog
serve`` and ``wsgi`` (the WSGI entry point) serve.  The HTTP plumbing they
share with the other APIs is :mod:`stowkit.corelib.web`.
"""
