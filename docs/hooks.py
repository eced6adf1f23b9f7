"""MkDocs hook: the code copied from README.md must stay identical to it.

A page marks a copied block by putting ``<!-- copied from README.md -->`` on the line before
its opening fence. At build time every such block is compared with the README's Python code
blocks; a block that matches none of them is a warning, which fails ``mkdocs build --strict``
(``make docs``, run in CI), so the README and the site cannot drift apart silently.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.readme_sync")

MARKER = "<!-- copied from README.md -->"
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
MARKED = re.compile(re.escape(MARKER) + r"\s*\n```python\n(.*?)```", re.S)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    readme = Path(config["config_file_path"]).parent / "README.md"
    blocks = set(BLOCK.findall(readme.read_text()))
    marked = MARKED.findall(markdown)
    if markdown.count(MARKER) != len(marked):
        log.warning(f"{page.file.src_path}: a '{MARKER}' marker is not followed by a code block.")
    for code in marked:
        if code not in blocks:
            first = code.strip().splitlines()[0]
            log.warning(
                f"{page.file.src_path}: the block starting {first!r} differs from every Python "
                "block of README.md; copy the README's current code into the page."
            )
    return markdown
