"""Install the three top-level folders as one ``stowkit`` namespace.

The repository keeps ``corelib/``, ``plugins/`` and ``cli/`` at its top (the
layout users asked for); installed, they are ``stowkit.corelib``,
``stowkit.plugins`` and ``stowkit.cli``, so nothing but ``stowkit`` lands at
the top of site-packages.  Everything else lives in setup.cfg; the version
comes from git tags (setuptools-scm).
"""

from setuptools import find_packages, setup

TOP = ("corelib", "plugins", "cli")

setup(
    package_dir={f"stowkit.{top}": top for top in TOP},
    packages=[
        f"stowkit.{name}"
        for top in TOP
        for name in (top, *(f"{top}.{sub}" for sub in find_packages(top)))
    ],
)
