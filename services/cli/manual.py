"""Help that reads like a manual page, for ``consent-ledger audit``'s tools.

``ManualParser`` lays out ``--help`` as NAME, SYNOPSIS, DESCRIPTION, OPTIONS (and
ARGUMENTS), EXAMPLES, EXIT STATUS and SEE ALSO, from what each tool gives it:
a one-line summary, a description, examples and the exit statuses. argparse still
parses, words the options and wraps them; only the layout is a manual's."""

from __future__ import annotations

import argparse
import textwrap
from dataclasses import dataclass, field

INDENT = "       "
"""Where a manual page's text starts, as man(1) sets it."""

SECTIONS = ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXAMPLES", "EXIT STATUS")
"""The sections every page has, in this order."""


@dataclass(frozen=True)
class Manual:
    summary: str
    """What it does, in one line (NAME's and the tool list's)."""
    description: str
    examples: str
    """Commands, one a line, as typed (comments start with #)."""
    exit_status: str
    see_also: tuple[str, ...] = field(default=())


class ManualParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose help is a manual page (``manual``)."""

    def __init__(self, *args: object, manual: Manual | None = None, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.manual = manual

    def format_help(self) -> str:
        if self.manual is None:
            return super().format_help()
        page = self.manual
        synopsis = self._get_formatter()
        synopsis.add_usage(self.usage, self._actions, self._mutually_exclusive_groups, "")
        usage = synopsis.format_help().strip("\n")
        sections = [
            ("NAME", f"{self.prog} - {page.summary}"),
            ("SYNOPSIS", usage),
            ("DESCRIPTION", page.description),
        ]
        titles = {"positional arguments": "ARGUMENTS", "options": "OPTIONS"}
        for group in self._action_groups:
            if not group._group_actions:
                continue
            formatter = self._get_formatter()
            formatter.add_arguments(group._group_actions)
            title = titles.get(group.title or "", (group.title or "OPTIONS").upper())
            sections.append((title, formatter.format_help().rstrip("\n")))
        sections += [("EXAMPLES", page.examples), ("EXIT STATUS", page.exit_status)]
        if page.see_also:
            sections.append(("SEE ALSO", ", ".join(page.see_also)))
        return (
            "\n\n".join(f"{title}\n{_indent(text, title)}" for title, text in sections if text)
            + "\n"
        )


def _indent(text: str, title: str) -> str:
    if title in {"ARGUMENTS", "OPTIONS"}:  # argparse indents its own by two spaces
        return textwrap.indent(textwrap.dedent(text), INDENT[:-2])
    return textwrap.indent(textwrap.dedent(text).strip("\n"), INDENT)


def tool(tools: argparse._SubParsersAction, name: str, manual: Manual) -> ManualParser:  # type: ignore[type-arg]
    """Add the tool ``name`` to ``tools`` (``consent-ledger audit``'s subparsers) with
    its manual page as its help."""
    parser: ManualParser = tools.add_parser(
        name, help=manual.summary, description=manual.summary, manual=manual
    )
    return parser
