"""Strip outputs from the example notebooks, so that git holds sources only.

``python notebooks/strip.py`` rewrites every ``notebooks/*.ipynb`` in place: no outputs, no
execution counts, no per-cell execution metadata, no widget state, and the notebook metadata
cut down to the kernel spec and the language name. ``--check`` changes nothing and exits
with status 1 when a notebook would change. Paths given on the command line replace the
default set.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

NOTEBOOK_DIR = Path(__file__).resolve().parent
#: Notebook metadata kept by :func:`strip_notebook` (everything else is dropped).
KEEP_METADATA = ("kernelspec",)
#: Cell metadata written by front ends and executors (timings, scroll state), dropped.
DROP_CELL_METADATA = ("execution", "collapsed", "scrolled", "ExecuteTime")


def strip_notebook(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Remove outputs and run-time metadata from ``nb`` (in place); returns ``nb``."""
    language = nb.metadata.get("language_info", {}).get("name", "python")
    nb.metadata = nbformat.NotebookNode(
        {key: nb.metadata[key] for key in KEEP_METADATA if key in nb.metadata}
    )
    nb.metadata["language_info"] = nbformat.NotebookNode({"name": language})
    for cell in nb.cells:
        for key in DROP_CELL_METADATA:
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return nb


def stripped_text(path: Path) -> str:
    """The file content ``path`` would have after stripping."""
    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    return nbformat.writes(strip_notebook(nb)) + "\n"


def notebooks() -> list[Path]:
    """The example notebooks, in order."""
    return sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: all)")
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if a notebook has outputs"
    )
    args = parser.parse_args(argv)
    dirty = []
    for path in args.paths or notebooks():
        text = stripped_text(path)
        if path.read_text(encoding="utf-8") == text:
            continue
        dirty.append(path)
        if not args.check:
            path.write_text(text, encoding="utf-8")
    verb = "would strip" if args.check else "stripped"
    for path in dirty:
        print(f"{verb} {path}")
    return 1 if dirty and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
