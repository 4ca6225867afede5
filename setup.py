"""Install the three top-level folders, and the package that joins them, as ``stowkit``.

The repository keeps ``corelib/``, ``plugins/`` and ``cli/`` at its top (the
layout users asked for); installed, they are ``stowkit.corelib``,
``stowkit.plugins`` and ``stowkit.cli``, so nothing but ``stowkit`` lands at
the top of site-packages.  ``stowkit`` itself (its ``__init__.py``, the
public API, and ``py.typed``) lives in ``corelib/_stowkit/``: the top level
is fixed, and the public face belongs with the library.  That folder is left
out of ``stowkit.corelib``'s packages so the facade is installed once, as
``stowkit``.  Everything else lives in setup.cfg; the version comes from git
tags (setuptools-scm).
"""

from setuptools import find_packages, setup

TOP = ("corelib", "plugins", "cli")
#: Where the ``stowkit`` package itself lives (inside corelib/, not below it).
FACADE = "corelib/_stowkit"

setup(
    package_dir={"stowkit": FACADE, **{f"stowkit.{top}": top for top in TOP}},
    packages=[
        "stowkit",
        *(
            f"stowkit.{name}"
            for top in TOP
            for name in (
                top,
                *(f"{top}.{sub}" for sub in find_packages(top, exclude=["_stowkit*"])),
            )
        ),
    ],
)
