"""stowkit's core library: interfaces, engines and the plumbing they share.

Nothing in this package imports a backend; backends are found through
stevedore entry points (see :mod:`stowkit.corelib.registry`).
"""
