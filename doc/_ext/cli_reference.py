"""Sphinx directives for stowkit's command-line reference.

cliff's ``autoprogram-cliff`` finds commands through an entry-point
namespace, but stowkit registers its built-in commands from the ``COMMANDS``
tables of its ``cli`` modules (see ``stowkit.cli.app``).  The directives here
reuse cliff's formatting and take their input from where stowkit keeps it:

``autoprogram-cliff-app`` (argument: the dotted path of a cliff ``App``)
    Every command of the application's own ``CommandManager`` (built-in ones
    and those of the ``stowkit.cli`` entry-point namespace alike), in the
    manager's order, one section per command and one per noun.  Options:
    ``:application:``, ``:command:`` (a shell pattern), ``:exclude:`` (comma
    separated patterns), ``:ignored:`` and ``:arguments:`` as for
    ``autoprogram-cliff``.

``autoprogram-argparse`` (argument: ``module:function`` returning an
``argparse.ArgumentParser``)
    A plain argparse program, such as the compatibility front ends, with one
    section per sub-command.  Option: ``:prog:``, the program name to show
    (the installed script's, when the parser says another).

Both, and oslo.config's ``show-options``, record the source files of the
``stowkit`` modules they loaded as dependencies of the page, so an
incremental build re-reads the page when the code it documents changes.

For the man builder, links to other pages are printed as their text alone:
with docutils 0.22, Sphinx 9's manual page writer prints them as
``text <>`` (sphinx-doc/sphinx#14427).
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import sys
from typing import Any

from cliff import sphinxext as cliff_sphinxext
from docutils import nodes, statemachine
from docutils.parsers.rst import directives
from oslo_config import sphinxext as oslo_sphinxext
from sphinx.transforms.post_transforms import SphinxPostTransform

#: Top-level package whose modules' source files pages depend on.
PACKAGE = "stowkit"


def note_package_sources(env: Any, package: str = PACKAGE) -> None:
    """Make the current page depend on every loaded module of ``package``."""
    for name, module in list(sys.modules.items()):
        if name != package and not name.startswith(package + "."):
            continue
        path = getattr(module, "__file__", None)
        if path and path.endswith(".py"):
            env.note_dependency(path)


def _section(title: str, ident: str) -> nodes.section:
    return nodes.section(
        "",
        nodes.title(text=title),
        ids=[nodes.make_id(ident)],
        names=[nodes.fully_normalize_name(ident)],
    )


class AutoprogramCliffAppDirective(cliff_sphinxext.AutoprogramCliffDirective):
    """Document the commands of a cliff application's own command manager."""

    option_spec = {
        **cliff_sphinxext.AutoprogramCliffDirective.option_spec,
        "exclude": directives.unchanged,
    }

    def _load_commands(self) -> dict[str, Any]:
        app = self._load_app()
        if app is None:
            raise self.error(f"{self.arguments[0]!r} is not an importable cliff App class")
        manager = app.command_manager
        pattern = self.options.get("command")
        excluded = [p.strip() for p in self.options.get("exclude", "").split(",") if p.strip()]
        names = [
            name
            for name in manager.commands
            if (not pattern or fnmatch.fnmatch(name, pattern))
            and not any(fnmatch.fnmatch(name, p) for p in excluded)
        ]
        if not names:
            raise self.warning(
                f"no commands of {self.arguments[0]} match {pattern!r}"
                if pattern
                else f"{self.arguments[0]} has no commands"
            )
        return {name: self._load_command(manager, name) for name in names}

    def run(self) -> list[nodes.Node]:
        self.env = self.state.document.settings.env
        application = (
            self.options.get("application") or self.env.config.autoprogram_cliff_application
        )
        commands = self._load_commands()
        ignored = self._get_ignored_opts()

        # One section per noun (the first word) holding its verbs, in the
        # manager's order; a one-word command that is alone stands by itself.
        groups: dict[str, list[str]] = {}
        for name in commands:
            groups.setdefault(name.split()[0], []).append(name)

        output: list[nodes.Node] = []
        for noun, names in groups.items():
            sections = [
                node
                for name in names
                for node in self._generate_nodes_per_command(
                    name, f"{application} {name}".strip(), commands[name], ignored
                )
            ]
            if names == [noun]:
                # Labelled by the whole command line: a bare one-word label
                # ("agent") would clash with the option group of that name.
                for node in sections:
                    if isinstance(node, nodes.section):
                        node["names"] = [nodes.fully_normalize_name(f"{application} {noun}")]
                output.extend(sections)
            else:
                group = _section(noun, f"{application} {noun}".strip())
                group.extend(sections)
                output.append(group)
        note_package_sources(self.env)
        return output


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse._SubParsersAction]:
    return [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]


def _rename(parser: argparse.ArgumentParser, prog: str) -> None:
    """Give ``parser`` and its sub-commands' parsers the program name ``prog``."""
    parser.prog = prog
    for action in _subparsers(parser):
        for name, sub in action.choices.items():
            _rename(sub, f"{prog} {name}")


class AutoprogramArgparseDirective(cliff_sphinxext.AutoprogramCliffDirective):
    """Document an argparse program and its sub-commands with cliff's formatter."""

    required_arguments = 1
    option_spec = {"prog": directives.unchanged, "ignored": directives.unchanged}

    def _load_parser(self) -> argparse.ArgumentParser:
        module_name, _, attr = self.arguments[0].partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise self.error(f"cannot load {self.arguments[0]}: {exc}") from None
        parser = factory()
        if not isinstance(parser, argparse.ArgumentParser):
            raise self.error(f"{self.arguments[0]} did not return an argparse.ArgumentParser")
        return parser

    def _parse(self, parser: argparse.ArgumentParser, into: nodes.Element) -> None:
        self._drop_ignored_options(parser, self._get_ignored_opts())
        result = statemachine.StringList()
        for line in cliff_sphinxext._format_parser(parser):
            result.append(line, f"<{parser.prog}>")
        self.state.nested_parse(result, 0, into)

    def _nodes(self, parser: argparse.ArgumentParser, into: nodes.Element) -> None:
        for action in _subparsers(parser):
            if not action.help:
                action.help = "One of the commands below: " + ", ".join(action.choices) + "."
        self._parse(parser, into)
        for action in _subparsers(parser):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                if sub.description is None:
                    sub.description = helps.get(name)
                section = _section(name, sub.prog)
                self._nodes(sub, section)
                into.append(section)

    def run(self) -> list[nodes.Node]:
        self.env = self.state.document.settings.env
        parser = self._load_parser()
        if "prog" in self.options:
            _rename(parser, self.options["prog"])
        container = nodes.section()
        self._nodes(parser, container)
        note_package_sources(self.env)
        return container.children


class ShowOptionsDirective(oslo_sphinxext.ShowOptionsDirective):
    """oslo.config's ``show-options``, re-read when the options' code changes."""

    def run(self) -> list[nodes.Node]:
        result = super().run()
        note_package_sources(self.state.document.settings.env)
        return result


class ManPageLinks(SphinxPostTransform):
    """In man pages, print a link to another page as its text, in italics."""

    builders = ("man",)
    default_priority = 900  # after the references are resolved

    def run(self, **kwargs: Any) -> None:
        for ref in list(self.document.findall(nodes.reference)):
            if not ref.get("refuri", "").startswith(("http:", "https:", "ftp:", "mailto:")):
                ref.replace_self(nodes.emphasis("", "", *ref.children))


def setup(app: Any) -> dict[str, Any]:
    app.setup_extension("cliff.sphinxext")
    app.setup_extension("oslo_config.sphinxext")
    app.add_directive("autoprogram-cliff-app", AutoprogramCliffAppDirective)
    app.add_directive("autoprogram-argparse", AutoprogramArgparseDirective)
    app.add_directive("show-options", ShowOptionsDirective, override=True)
    app.add_post_transform(ManPageLinks)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
