"""A static view of the course: every lesson rendered to HTML, plus an index page, in one publishable folder.

    python -m logattn_ref.site --out site/                 # render the lessons as committed (no outputs)
    python -m logattn_ref.site --out site/ --execute       # run each lesson first (full sizes)
    python -m logattn_ref.site --out site/ --execute --fast   # run in fast mode (CI set: tiny sizes)

The folder holds ``index.html``, one ``<lesson>.html`` per notebook and ``.nojekyll`` (GitHub Pages then
serves it as is). Execution uses nbclient, with the notebook's folder as working directory and the widget
state stored, so the explorers render as static widgets; rendering uses nbconvert's ``lab`` template. A lesson
that raises is reported and left out of the index, and the command exits 1: a site never shows a broken
lesson as if it were fine.
"""

from __future__ import annotations

import argparse
import datetime
import html
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import nbformat

from .notebooks import repo_root

SKIP_TAGS = {"logattn-colab-badge"}  # the badge links to Colab; on the static site it would be noise
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # tracebacks from the kernel come coloured


@dataclass
class Page:
    """One rendered lesson: where it came from, its title, its HTML file (None if it failed) and the error."""

    source: Path
    title: str
    html: Optional[str] = None
    error: str = ""


def lesson_paths(root: Optional[Path] = None) -> List[Path]:
    """The lesson notebooks, in course order (``notebooks/*.ipynb`` sorted by name)."""
    return sorted(((root or repo_root()) / "notebooks").glob("*.ipynb"))


def title_of(nb: nbformat.NotebookNode, fallback: str) -> str:
    """The text of the first ``#`` heading of the notebook's markdown cells, else ``fallback``."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return fallback


def execute(nb: nbformat.NotebookNode, path: Path, timeout: int, fast: bool) -> nbformat.NotebookNode:
    """Run ``nb`` in a fresh python3 kernel in ``path``'s folder; ``fast`` sets CI=1 for the kernel.

    Raises:
        nbclient.exceptions.CellExecutionError: a cell raised (the message names the cell and error).
    """
    from nbclient import NotebookClient

    previous = os.environ.get("CI")
    if fast:
        os.environ["CI"] = "1"  # the kernel inherits the environment at start
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=True,
                                resources={"metadata": {"path": str(path.parent)}})
        return client.execute()
    finally:
        if fast:
            if previous is None:
                os.environ.pop("CI", None)
            else:
                os.environ["CI"] = previous


def render(nb: nbformat.NotebookNode, title: Optional[str] = None) -> str:
    """The notebook as a standalone HTML page (nbconvert, ``lab`` template), without the Colab badge, whose
    ``<title>`` is ``title`` (default: the lesson's first heading; nbconvert alone would write "Notebook")."""
    from nbconvert import HTMLExporter

    nb.cells = [c for c in nb.cells if not SKIP_TAGS & set(c.get("metadata", {}).get("tags", []))]
    resources = {"metadata": {"name": title or title_of(nb, "logattn lesson")}}
    body, _resources = HTMLExporter(template_name="lab").from_notebook_node(nb, resources=resources)
    return body


def index_html(pages: Sequence[Page], executed: bool, fast: bool) -> str:
    """The index page: the lessons that rendered, linked, in order; the ones that failed, named."""
    try:
        from importlib.metadata import version

        package_version = version("logattn-ref")
    except Exception:
        package_version = "unknown"
    mode = ("executed in fast mode (tiny sizes)" if fast else "executed") if executed else "not executed (no outputs)"
    items = "\n".join(f'    <li><a href="{html.escape(p.html)}">{html.escape(p.title)}</a></li>'
                      for p in pages if p.html)
    failed = "\n".join(f"    <li>{html.escape(p.title)}: {html.escape(p.error)}</li>"
                       for p in pages if not p.html)
    failed_block = f"\n  <h2>Failed to build</h2>\n  <ul>\n{failed}\n  </ul>" if failed else ""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>logattn: the lessons</title>
  <style>
    body {{ font-family: system-ui, sans-serif; max-width: 46rem; margin: 3rem auto; padding: 0 1rem; line-height: 1.5; }}
    li {{ margin: .4rem 0; }}
    footer {{ color: #666; font-size: .9rem; margin-top: 3rem; }}
  </style>
</head>
<body>
  <h1>logattn: softmax attention with constant cost per token</h1>
  <p>A static view of the course's lessons. To run them, open the notebooks in JupyterLab or on Colab.</p>
  <ol>
{items}
  </ol>{failed_block}
  <footer>Built {stamp} with logattn-ref {html.escape(package_version)}; lessons {mode}.</footer>
</body>
</html>
"""


def build(out: Path, paths: Sequence[Path], *, run: bool = False, fast: bool = False,
          timeout: int = 600) -> List[Page]:
    """Render ``paths`` (executing them first if ``run``) into ``out`` with an ``index.html``.

    Returns the pages; those whose ``html`` is None failed (their ``error`` says why).

    Raises:
        FileNotFoundError: a path in ``paths`` does not exist.
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / ".nojekyll").write_text("")
    pages = []
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"notebook {path} does not exist")
        nb = nbformat.read(path, as_version=4)
        page = Page(source=path, title=title_of(nb, path.stem))
        try:
            if run:
                nb = execute(nb, path, timeout, fast)
            (out / f"{path.stem}.html").write_text(render(nb, page.title), encoding="utf-8")
            page.html = f"{path.stem}.html"
        except Exception as err:  # report every broken lesson, not just the first
            lines = [line for line in _ANSI.sub("", str(err)).splitlines() if line.strip()]
            page.error = f"{type(err).__name__}: {lines[-1] if lines else ''}"  # the raising line says why
        pages.append(page)
    (out / "index.html").write_text(index_html(pages, run, fast), encoding="utf-8")
    return pages


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m logattn_ref.site", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write the site into")
    parser.add_argument("--execute", action="store_true", help="run each lesson before rendering it")
    parser.add_argument("--fast", action="store_true", help="with --execute: fast mode (sets CI=1 for the kernels)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds a cell may run (default 600)")
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: every lesson in notebooks/)")
    args = parser.parse_args(argv)
    if args.fast and not args.execute:
        parser.error("--fast only applies with --execute")
    pages = build(args.out, args.paths or lesson_paths(), run=args.execute, fast=args.fast, timeout=args.timeout)
    for page in pages:
        print(f"{'OK    ' if page.html else 'FAILED'} {page.source}" + (f"\n       {page.error}" if page.error else ""))
    print(f"site written to {args.out / 'index.html'}")
    return 0 if all(p.html for p in pages) else 1


if __name__ == "__main__":
    sys.exit(main())
