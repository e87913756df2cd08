"""A griffe extension for the API reference: reads eventbus's reST-flavoured docstrings as
Markdown, without touching the package.

The docstrings are written for ``help()`` and Sphinx habits; mkdocstrings renders them as
Markdown. Three things differ, and are rewritten here before rendering:

- roles (``:class:`~eventbus.transport.Capabilities```) become inline code (``Capabilities``;
  the ``~`` keeps only the last dotted part, as in Sphinx);
- a paragraph ending in ``::`` introduces a literal block: the ``::`` becomes ``:`` (or goes
  away when it stands alone) and the indented block after it stays an indented code block;
- doctest lines (``>>>`` and their ``...`` continuations) become a fenced ``pycon`` block
  instead of a Markdown block quote.

Loaded by mkdocs.yml (``extensions: [docs/_ext/rest_to_markdown.py]``); excluded from the site.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):`(~?)([^`]+)`")


def _role(match: re.Match[str]) -> str:
    short, target = match.group(1), match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


def _literal_markers(lines: list[str]) -> list[str]:
    out: list[str] = []
    for line in lines:
        if line.strip() == "::":
            continue
        if line.endswith("::"):
            line = line[:-1]
        out.append(line)
    return out


def _doctests(lines: list[str]) -> list[str]:
    out: list[str] = []
    inside = False
    for line in lines:
        stripped = line.lstrip()
        is_prompt = stripped.startswith(">>>") or (inside and stripped.startswith("..."))
        if is_prompt and not inside:
            out.append("```pycon")
            inside = True
        elif inside and not is_prompt and stripped:
            pass  # expected output of the previous prompt: stays inside the block
        elif inside and not stripped:
            out.append("```")
            inside = False
        out.append(stripped if inside else line)
    if inside:
        out.append("```")
    return out


def rewrite(text: str) -> str:
    """The docstring ``text`` with reST roles, ``::`` markers and doctests made Markdown."""
    text = _ROLE.sub(_role, text)
    return "\n".join(_doctests(_literal_markers(text.split("\n"))))


class RestToMarkdown(griffe.Extension):
    """Rewrite each docstring once, when griffe creates its object (packages included)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
