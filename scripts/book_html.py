"""HTML of the book (``scripts/build_book.py``): one page per executed notebook and the index.

Pages go through nbconvert's JupyterLab template, made offline by ``scripts/book_template/book``:
no require.js, widget manager or mermaid from a CDN, and MathJax 2.7 from the pip package
``jupyter-server-mathjax``, copied into the book's ``mathjax/`` folder. Widgets become static
snapshots (``book_widgets``); exercise stubs are shown as the reader gets them (the book ran them
with the solution filled in); set-up and solution cells are collapsed; links between notebooks
point at their pages. ``index.html`` is ``notebooks/README.md`` (the course path) with the
measured table filled in and the build's own table of pages.
"""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path

from book_widgets import snapshot_outputs

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TEMPLATE_DIR = HERE / "book_template"
MATHJAX_DIR = "mathjax"
MATHJAX_URL = f"{MATHJAX_DIR}/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"

# Settings that keep MathJax 2.7 from asking for files it does not ship (both cause console errors):
# the hidden assistive MathML's styles name the TeX fonts (only STIX-Web is in the package), and the
# HTML-CSS output's font test loads a "blank" font from about:blank, which Chromium now refuses.
MATHJAX_OFFLINE = (  # a second Config call: it merges into the first
    "MathJax.Hub.Config({menuSettings: {assistiveMML: false}, "
    '"HTML-CSS": {styles: {"@font-face": {"font-family": "MathJax_Blank", src: "local(\'MathJax_Blank_absent\')"}}}});'
)
MATHJAX_HEAD = (  # the same configuration as the page template's
    '<link rel="icon" href="data:,">'
    '<script type="text/x-mathjax-config">MathJax.Hub.Config({tex2jax: {inlineMath: [["$", "$"], ["\\\\(", "\\\\)"]], '
    'processEscapes: true}, "HTML-CSS": {availableFonts: [], imageFont: null, preferredFont: null, webFont: "STIX-Web"}, '
    f'messageStyle: "none", showMathMenu: false}});{MATHJAX_OFFLINE}</script>'
    f'<script src="{MATHJAX_URL}"></script>'
)

CSS = """
.book-nav { display: flex; gap: 1.5em; align-items: baseline; padding: 0.6em 1em; margin: 0 0 1em 0;
  border-bottom: 1px solid #ccc; font-family: var(--jp-ui-font-family, sans-serif); font-size: 14px; }
.book-nav a { text-decoration: none; }
.book-banner { margin: 0.5em 1em 1.2em 1em; padding: 0.8em 1em; border-radius: 6px; font-size: 14px;
  font-family: var(--jp-ui-font-family, sans-serif); line-height: 1.5; }
.book-banner p { margin: 0.3em 0; }
.book-mode-full { background: #e8f5e9; border: 1px solid #66bb6a; }
.book-mode-fast { background: #fff8e1; border: 1px solid #ffb300; }
.book-mode-failed { background: #ffebee; border: 1px solid #e53935; }
.book-label { font-family: var(--jp-ui-font-family, sans-serif); font-size: 12px; color: #5d4037; background: #efebe9;
  padding: 0.2em 0.6em; margin: 0.4em 0 0 0; }
details.book-collapsed > summary { cursor: pointer; color: #555; font-size: 13px; padding: 0.2em 0.5em;
  font-family: var(--jp-ui-font-family, sans-serif); }
.book-widget { border: 1px dashed #90a4ae; border-radius: 6px; padding: 0.6em; margin: 0.3em 0; }
.book-widget-note { font-size: 12px; color: #546e7a; margin-top: 0.5em; font-style: italic; }
.book-w-box { display: flex; gap: 0.4em; flex-wrap: wrap; align-items: flex-start; }
.book-w-column { flex-direction: column; }
.book-w-row { flex-direction: row; }
.book-w-control { display: flex; gap: 0.5em; align-items: center; font-size: 13px; min-width: 300px; }
.book-w-label { min-width: 110px; text-align: right; }
.book-w-readout { font-family: monospace; }
.book-w-image { max-width: 100%; height: auto; }
button.book-w-on { font-weight: bold; background: #cfd8dc; }
.book-footer { margin: 2em 1em; padding-top: 0.6em; border-top: 1px solid #ccc; font-size: 13px; color: #555;
  font-family: var(--jp-ui-font-family, sans-serif); }
"""

INDEX_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; max-width: 1100px; margin: 2em auto;
  padding: 0 1em; line-height: 1.55; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; vertical-align: top; }
th { background: #f3f3f3; }
code { background: #f5f5f5; padding: 0 0.2em; }
pre { background: #f5f5f5; padding: 0.6em; overflow-x: auto; }
.book-built { background: #e3f2fd; border: 1px solid #64b5f6; padding: 0.6em 1em; border-radius: 6px; }
"""


def copy_mathjax(out: Path) -> Path:
    """Copy MathJax (``jupyter-server-mathjax``'s files) into ``out/mathjax`` once per version."""
    try:
        import jupyter_server_mathjax
    except ImportError:
        raise SystemExit(
            "error: the jupyter-server-mathjax package (MathJax for offline pages) is missing; fix: make venv"
        ) from None
    src = Path(jupyter_server_mathjax.__file__).parent / "static"
    dest = out / MATHJAX_DIR
    stamp = dest / ".from"
    tag = f"jupyter-server-mathjax {getattr(jupyter_server_mathjax, '__version__', '?')} {src}"
    if stamp.is_file() and stamp.read_text() == tag:
        return dest
    tmp = out / f".{MATHJAX_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("localization", "*.mp3", "*.ogg"))
    (tmp / ".from").write_text(tag)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def exporter():
    """nbconvert's HTML exporter on the book template (installed templates only, no download)."""
    from nbconvert import HTMLExporter

    exp = HTMLExporter(template_name="book", extra_template_basedirs=[str(TEMPLATE_DIR)])
    exp.exclude_input_prompt = True
    exp.exclude_output_prompt = True
    return exp


def prepare(executed, clean) -> dict:
    """The executed notebook as the book shows it (in place): exercise stubs as the reader gets
    them, widgets as static snapshots. Returns counts for the page's record."""
    stubs = {c.get("id"): c.source for c in clean.cells if "exercise" in c.get("metadata", {}).get("tags", [])}
    for cell in executed.cells:
        if "exercise" in cell.get("metadata", {}).get("tags", []) and cell.get("id") in stubs:
            cell.source = stubs[cell.get("id")]
    for cell in executed.cells:  # show_solution(...) displays the solution collapsed: its call adds nothing
        if "solution" in cell.get("metadata", {}).get("tags", []) and any(
            "<details" in "".join(o.get("data", {}).get("text/html", "")) for o in cell.get("outputs", [])
        ):
            cell.metadata["book_hide_input"] = True
    widgets = snapshot_outputs(executed)
    figures = sum(
        1
        for c in executed.cells
        for o in c.get("outputs", [])
        if any(m in o.get("data", {}) for m in ("image/png", "image/jpeg", "image/svg+xml"))
    )
    return {"widgets": widgets, "figures": figures, "exercises": len(stubs)}


def book_links(text: str, pages: set[str]) -> str:
    """Links to a notebook of the book point at its page (``01_x.ipynb`` -> ``01_x.html``)."""

    def repl(m: re.Match) -> str:
        stem = Path(m.group(2)).stem
        return f'{m.group(1)}"{stem}.html{m.group(3) or ""}"' if stem in pages else m.group(0)

    return re.sub(r'(href=)"(?:\./|notebooks/)?([\w.-]+\.ipynb)(#[^"]*)?"', repl, text)


def _nav(prev: str | None, nxt: str | None, titles: dict[str, str]) -> str:
    parts = ["<a href='index.html'>Course path (index)</a>"]
    if prev:
        parts.append(f"<a href='{prev}.html'>&larr; {html.escape(titles[prev])}</a>")
    if nxt:
        parts.append(f"<a href='{nxt}.html'>{html.escape(titles[nxt])} &rarr;</a>")
    return f"<nav class='book-nav'>{''.join(parts)}</nav>"


def banner(stem: str, mode: str, record: dict, reason: str | None, fast_build: bool = False) -> str:
    """The box on top of a page: the mode it ran in, when and how long, and how to run it live."""
    when = html.escape(str(record.get("finished_at", "?"))[:16].replace("T", " "))
    secs = record.get("seconds")
    took = f" in {secs:.0f} s" if isinstance(secs, (int, float)) else ""
    if record.get("error"):
        head = (
            f"<p><strong>This notebook FAILED</strong> in {mode} mode: {html.escape(record['error'])}. "
            "The page shows the outputs up to the failing cell.</p>"
        )
        cls = "failed"
    elif mode == "full":
        head = (
            f"<p><strong>Full mode</strong>: executed top to bottom on {when}{took} with every exercise "
            "solved; every number in the text was computed by this run.</p>"
        )
        cls = "full"
    else:
        if reason:
            why = f" The book runs this notebook in fast mode because {html.escape(reason)}."
        elif fast_build:
            why = " This is the book's fast build (<code>make book FAST=1</code>, what CI checks); <code>make book</code> runs it in full mode."
        else:
            why = ""
        head = (
            f"<p><strong>Fast mode</strong> (<code>DSNOT_LITE_FAST=1</code>: tiny calibration, few evaluation windows, "
            f"first blocks only): executed on {when}{took} with every exercise solved. Its numbers are a small sample; "
            f"the notebook's own banner below says which claims fast mode cannot show.{why}</p>"
        )
        cls = "fast"
    live = (
        f"<p>To run it yourself, with live widgets and your own answers to the exercises: locally "
        f"<code>.venv/bin/jupyter lab notebooks/{stem}.ipynb</code> (after <code>make venv</code>), or in Colab "
        "(upload the notebook; its first cell installs the package, see the course path).</p>"
    )
    return f"<div class='book-banner book-mode-{cls}'>{head}{live}</div>"


def render_page(
    executed,
    clean,
    stem: str,
    mode: str,
    record: dict,
    reason: str | None,
    order: list[str],
    titles: dict,
    fast_build: bool = False,
) -> tuple[str, dict]:
    """One page of the book: ``(html text, counts)``."""
    counts = prepare(executed, clean)
    i = order.index(stem)
    nav = _nav(order[i - 1] if i else None, order[i + 1] if i + 1 < len(order) else None, titles)
    resources = {
        "metadata": {"name": titles[stem]},
        "book": {
            "css": CSS,
            "mathjax_url": MATHJAX_URL,
            "mathjax_offline": MATHJAX_OFFLINE,
            "header_html": nav + banner(stem, mode, record, reason, fast_build),
            "footer_html": f"<div class='book-footer'>{nav}Built by <code>make book</code> from "
            f"<code>notebooks/{stem}.ipynb</code> ({mode} mode).</div>",
        },
    }
    executed.metadata["title"] = titles[stem]
    body, _ = exporter().from_notebook_node(executed, resources=resources)
    return book_links(body, set(order)), counts


def title_of(nb, stem: str) -> str:
    """The notebook's first Markdown heading (``# 01 · ...``), else its file stem."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            m = re.search(r"^#\s+(.+)$", cell.source, re.M)
            if m:
                return m.group(1).strip()
    return stem


def render_index(readme_md: str, built_rows: list[dict], fast: bool, build_note: str) -> str:
    """``index.html``: the course path (``notebooks/README.md``, table filled in) and this build's pages."""
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    rows = "".join(
        f"<tr><td><a href='{r['stem']}.html'>{html.escape(r['title'])}</a></td><td>{r['mode']}</td>"
        f"<td>{r['status']}</td><td>{r['seconds']}</td><td>{r['figures']}</td><td>{r['widgets']}</td></tr>"
        for r in built_rows
    )
    built = (
        "<div class='book-built'><p><strong>This book</strong> "
        + ("(<code>make book FAST=1</code>: every page from a fast-mode run)" if fast else "(<code>make book</code>)")
        + f". {html.escape(build_note)}</p>"
        "<table><tr><th>page</th><th>mode</th><th>status</th><th>run (s)</th><th>figures</th><th>widgets</th></tr>"
        f"{rows}</table><p>Widgets are static snapshots here; math is typeset by a local copy of MathJax; "
        "nothing is loaded from the network.</p></div>"
    )
    pages = {r["stem"] for r in built_rows}
    body = book_links(markdown2html_mistune(readme_md), pages)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1.0'>"
        f"<title>dsnot-lite: the course</title><style>{INDEX_CSS}</style>{MATHJAX_HEAD}</head>"
        f"<body><main>{built}{body}</main></body></html>\n"
    )
