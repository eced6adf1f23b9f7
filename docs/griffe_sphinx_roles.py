"""Griffe extension: render the package's Sphinx-style markup in mkdocstrings pages.

The docstrings in ``numpyro_smile`` follow NumPyro's conventions (Google sections with
Sphinx roles such as ``:class:`~numpyro_smile.SMILE``` and ``Example::`` literal blocks), which
read well in ``help()`` and IDEs. Markdown knows neither, so before mkdocstrings parses a
docstring this extension rewrites, on the page only (the source is untouched):

* ``:class:`target``` (also ``func``, ``meth``, ``data``, ``mod``, ``attr``, ``obj``, ``exc``)
  into an optional cross-reference: a link when the target is documented on some page, plain
  code otherwise (never a warning). Targets are resolved like Sphinx resolves them: as
  written, then relative to the enclosing scopes (class, module, package). A leading ``~``
  shows only the last component.
* ``Example::`` followed by an indented block into an ``Example:`` section holding a fenced
  Python code block.

Loaded from ``mkdocs.yml`` (``plugins.mkdocstrings.handlers.python.options.extensions``).
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|data|mod|attr|obj|exc):`(~?)([\w.]+)(?:\(\))?`")


def _resolve(target: str, obj: griffe.Object, collection: Any) -> str | None:
    """The full path of ``target`` as seen from ``obj``, or None if it is not in the package."""
    scopes = [""]
    scope: griffe.Object | None = obj
    while scope is not None:
        scopes.append(scope.path + ".")
        scope = scope.parent
    for prefix in scopes:
        path = prefix + target
        try:
            collection[path]
        except (KeyError, ValueError, IndexError, AttributeError, griffe.AliasResolutionError):
            continue
        return path
    return None


def _roles_to_autorefs(text: str, obj: griffe.Object, collection: Any) -> str:
    def replace(match: re.Match) -> str:
        short, target = match.group(1) == "~", match.group(2)
        title = target.rsplit(".", 1)[-1] if short else target
        path = _resolve(target, obj, collection)
        if path is None:
            return f"`{title}`"
        return f'<autoref identifier="{path}" optional><code>{title}</code></autoref>'

    return ROLE.sub(replace, text)


def _literal_blocks_to_fences(text: str) -> str:
    """``Example::`` + indented block -> ``Example:`` section with a fenced code block."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not (stripped.endswith("::") and not stripped.endswith(":::")):
            out.append(line)
            i += 1
            continue
        indent = len(line) - len(line.lstrip())
        block: list[str] = []
        j = i + 1
        while j < len(lines) and (
            not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent
        ):
            block.append(lines[j])
            j += 1
        while block and not block[-1].strip():
            block.pop()
        if not block:
            out.append(line)
            i += 1
            continue
        header = stripped[:-1]  # "Example::" -> "Example:"
        inner = " " * (indent + 4)
        body = textwrap.dedent("\n".join(block)).strip("\n").split("\n")
        out.append(" " * indent + header)
        out.append(inner + "```python")
        out.extend((inner + b) if b.strip() else "" for b in body)
        out.append(inner + "```")
        out.append("")
        i = j
    return "\n".join(out)


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles and literal blocks in every docstring of a loaded package."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        collection = loader.modules_collection
        seen: set[int] = set()

        def visit(obj: griffe.Object) -> None:
            if id(obj) in seen:
                return
            seen.add(id(obj))
            if obj.docstring is not None:
                text = _literal_blocks_to_fences(obj.docstring.value)
                obj.docstring.value = _roles_to_autorefs(text, obj, collection)
            for member in obj.members.values():
                if not member.is_alias:
                    visit(member)

        visit(pkg)
