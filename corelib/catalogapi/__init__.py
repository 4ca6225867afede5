"""The catalog's REST API: a freezer-api compatible WSGI app over any Catalog.

``schemas`` validates documents, ``service`` holds the semantics (ids,
defaults, job events, sessions), ``app`` routes HTTP requests (v1 and v2) to
it, ``auth`` decides who is asking, ``server`` serves it.
"""
