"""The book (`make book`): the executed-notebook cache, the offline HTML pages, the course stats and,
where Debian's Chromium is installed, every page in a real browser.

The book of the real notebooks is built (from the fast runs the notebook tests store) and checked
in a browser in ``tests/test_notebooks.py``, after those runs; here a tiny notebook stands in.
"""

from __future__ import annotations

import base64
import importlib
import importlib.util
import json
import re
import shutil
import sys
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
book_html = importlib.import_module("book_html")
book_widgets = importlib.import_module("book_widgets")
build_book = importlib.import_module("build_book")
course_stats = importlib.import_module("course_stats")
notebook_cache = importlib.import_module("notebook_cache")

CHROMIUM = Path("/usr/bin/chromium")
# a 1 x 1 PNG
PNG_HEX = (
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0000003010100c9fe92ef0000000049454e44ae426082"
)
PNG = base64.b64encode(bytes.fromhex(PNG_HEX)).decode()
REMOTE = re.compile(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=[\"']?(?:https?:)?//", re.I)


def _code(src: str, tags: list[str] | None = None, **meta):
    cell = nbformat.v4.new_code_cell(src)
    if tags:
        cell.metadata["tags"] = tags
    cell.metadata.update(meta)
    return cell


def _widget_state() -> dict:
    def model(name, **state):
        return {"model_name": name, "model_module": "@jupyter-widgets/controls", "state": {"_model_name": name, **state}}

    states = {
        "box": model("VBoxModel", children=["IPY_MODEL_s", "IPY_MODEL_d", "IPY_MODEL_img", "IPY_MODEL_out", "IPY_MODEL_h"]),
        "s": model("IntSliderModel", description="T (max swaps)", value=7, min=0, max=20, readout_format="d"),
        "d": model("DropdownModel", description="grow", _options_labels=["wanda", "dsnot"], index=1),
        "img": {**model("ImageModel", format="png"), "buffers": [{"path": ["value"], "data": PNG, "encoding": "base64"}]},
        "out": model("OutputModel", outputs=[{"output_type": "stream", "name": "stdout", "text": "row 3 stopped"}]),
        "h": model("HTMLModel", value="<b>true error 0.25</b>"),
    }
    return {"state": states, "version_major": 2, "version_minor": 0}


def test_widget_snapshot_shows_controls_image_and_outputs():
    html = book_widgets.snapshot("box", _widget_state()["state"])
    assert "T (max swaps)" in html and ">7<" in html  # the slider's label and readout
    assert "<option selected>dsnot</option>" in html and "<option>wanda</option>" in html
    assert f"data:image/png;base64,{PNG}" in html
    assert "row 3 stopped" in html and "<b>true error 0.25</b>" in html
    assert "open the notebook in JupyterLab or Colab" in html  # how to make it live
    assert "not saved" in book_widgets.snapshot("nope", {})
    bar = {"p": {"state": {"_model_name": "FloatProgressModel", "value": 3, "max": 3}}}
    assert "<progress" in book_widgets.snapshot("p", bar) and "Colab" not in book_widgets.snapshot("p", bar)


def _fake_executed() -> tuple[nbformat.NotebookNode, nbformat.NotebookNode]:
    """A clean notebook and its 'executed' copy (solution filled in, outputs), no kernel needed."""
    md = nbformat.v4.new_markdown_cell(
        "# 01 · A page\n\nThe error $\\Delta = W A - (M \\odot W) A$ and\n\n$$E_r = \\delta W_r G \\delta W_r^T$$\n\n"
        "Next: [notebook 02](02_next.ipynb)."
    )
    cells = [
        md,
        _code("# set-up", ["setup"]),
        _code("def f(x):\n    raise NotImplementedError('your code here')", ["exercise"], exercise="one_layer.f"),
        _code('show_solution("one_layer.f")', ["solution"], jupyter={"source_hidden": True}),
        _code("plot()"),
        _code("explorer"),
    ]
    clean = nbformat.v4.new_notebook(cells=cells)
    executed = nbformat.from_dict(json.loads(json.dumps(clean)))
    executed.cells[2].source = "# solution filled in\ndef f(x):\n    return SECRET_SOLUTION"
    executed.cells[3].outputs = [
        nbformat.v4.new_output("display_data", {"text/html": "<details><summary>Solution</summary></details>"})
    ]
    executed.cells[4].outputs = [nbformat.v4.new_output("display_data", {"image/png": PNG, "text/plain": "<Figure>"})]
    view = {"model_id": "box", "version_major": 2, "version_minor": 0}
    executed.cells[5].outputs = [
        nbformat.v4.new_output("display_data", {"application/vnd.jupyter.widget-view+json": view, "text/plain": "VBox()"})
    ]
    executed.metadata["widgets"] = {book_widgets.STATE_MIME: _widget_state()}
    return clean, executed


def test_page_is_offline_with_banner_collapsed_solutions_and_stub():
    clean, executed = _fake_executed()
    record = {"seconds": 12.3, "finished_at": "2026-01-02T03:04:05+0000", "error": None}
    page, counts = book_html.render_page(
        executed, clean, "01_a", "fast", record, "a reason", ["01_a", "02_next"], {"01_a": "01 · A page", "02_next": "02 · Next"}
    )
    assert not REMOTE.search(page), REMOTE.search(page).group(0)  # nothing loaded from another host
    assert "cdn" not in page.lower() and "require.js" not in page and "unpkg" not in page
    assert '<script src="mathjax/MathJax.js?config=' in page
    assert "Fast mode" in page and "a reason" in page and "12 s" in page  # the banner
    assert page.count('<details class="book-collapsed">') == 1  # the set-up cell
    assert "show_solution" not in page and "<details><summary>Solution</summary>" in page  # one expander per solution
    assert "NotImplementedError" in page and "SECRET_SOLUTION" not in page  # the stub, as the reader gets it
    assert 'href="02_next.html"' in page and "02_next.ipynb" not in page
    assert book_widgets.STATE_MIME not in page and "book-widget" in page
    assert counts == {"widgets": 1, "figures": 1, "exercises": 1}


def test_cache_key_follows_the_code_a_notebook_imports(tmp_path):
    nb_path = tmp_path / "nb.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[_code("from dsnot_lite.core import stats\nx = 1")]), nb_path)
    mods = {str(p.relative_to(ROOT)) for p in notebook_cache.package_modules(["from dsnot_lite.core import stats"])}
    assert {"dsnot_lite/__init__.py", "dsnot_lite/core/__init__.py", "dsnot_lite/core/stats.py"} <= mods
    assert not any(m.startswith(("dsnot_lite/study/", "dsnot_lite/tutorial/")) for m in mods)
    widgets = {str(p.relative_to(ROOT)) for p in notebook_cache.package_modules(["from dsnot_lite.tutorial import widgets"])}
    assert "dsnot_lite/plots/layer_plots.py" in widgets  # followed through the package's own imports
    key = notebook_cache.cache_key(nb_path, "fast")
    assert key == notebook_cache.cache_key(nb_path, "fast")
    assert len({key, notebook_cache.cache_key(nb_path, "full"), notebook_cache.cache_key(nb_path, "fast", ["X = 2"]),
                notebook_cache.cache_key(nb_path, "fast", solutions=False)}) == 4  # fmt: skip

    cache = tmp_path / "cache"
    assert notebook_cache.lookup(nb_path, "fast", cache_dir=cache) is None
    executed = nbformat.read(nb_path, as_version=4)
    executed.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="ran")]
    notebook_cache.store(nb_path, "fast", executed, 3.21, cache_dir=cache)
    nb, meta = notebook_cache.lookup(nb_path, "fast", cache_dir=cache)
    assert nb.cells[0].outputs[0]["text"] == "ran" and meta["seconds"] == 3.2
    assert notebook_cache.lookup(nb_path, "full", cache_dir=cache) is None
    nbformat.write(nbformat.v4.new_notebook(cells=[_code("from dsnot_lite.core import stats\nx = 2")]), nb_path)
    assert notebook_cache.lookup(nb_path, "fast", cache_dir=cache) is None  # the notebook changed
    assert notebook_cache.stored("nb", "fast", cache)["seconds"] == 3.2  # its last timing stays known


def _tiny_notebook(folder: Path) -> Path:
    params = _code('import os\nFAST = os.environ.get("DSNOT_LITE_FAST") == "1"', ["parameters"])
    plot = _code("import matplotlib.pyplot as plt\nfrom IPython.display import display\n"
                 "fig, ax = plt.subplots(figsize=(2, 2)); ax.plot([1, 3, 2]); display(fig); plt.close(fig)")  # fmt: skip
    md = nbformat.v4.new_markdown_cell("# 01 · Tiny\n\nThe expected error $\\mathbb{E}[\\Delta_r]$, and\n\n$$G = X^\\top X$$")
    path = folder / "01_tiny.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[md, params, plot, _code("print('fast' if FAST else 'full')")]), path)
    return path


@pytest.fixture(scope="module")
def tiny_book(tmp_path_factory):
    """A book of one tiny notebook, built twice: ``(out folder, first manifest, second manifest, seconds)``."""
    folder = tmp_path_factory.mktemp("tiny-book")
    path, out, cache = _tiny_notebook(folder), folder / "book", folder / "cache"
    quiet = lambda msg: None
    t0 = time.perf_counter()
    first = build_book.build([path], out, fast=True, log=quiet, cache_dir=cache)
    t1 = time.perf_counter()
    second = build_book.build([path], out, fast=True, log=quiet, cache_dir=cache)
    return out, first, second, (t1 - t0, time.perf_counter() - t1)


def test_book_builds_and_a_second_build_reuses_the_run(tiny_book):
    out, first, second, (t_first, t_second) = tiny_book
    assert [p["cached"] for p in first["pages"]] == [False] and [p["cached"] for p in second["pages"]] == [True]
    assert second["pages"][0]["seconds"] == first["pages"][0]["seconds"]  # the stored run's own time
    assert t_second < t_first
    page = (out / "01_tiny.html").read_text()
    assert "Fast mode" in page and re.search(r"<pre>fast\s*</pre>", page)  # the run really was fast
    assert first["pages"][0]["figures"] == 1 and "data:image/png;base64," in page
    assert (out / "mathjax" / "MathJax.js").is_file()
    index = (out / "index.html").read_text()
    assert "01_tiny.html" in index and "course path" in index.lower()
    assert json.loads((out / "book.json").read_text())["pages"][0]["stem"] == "01_tiny"


def test_build_book_rejects_bad_input_before_work(tmp_path, capsys):
    assert build_book.main([str(tmp_path / "missing.ipynb"), "--out", str(tmp_path / "b")]) == 2
    assert build_book.main(["--out", "/proc/dsnot-book"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(e.startswith("error: ") and "; fix: " in e for e in errors)
    assert not (tmp_path / "b").exists()


def test_course_path_table_is_generated_from_the_notebooks():
    text = (ROOT / "notebooks" / "README.md").read_text(encoding="utf-8")
    assert course_stats.BEGIN in text and course_stats.END in text, "run scripts/course_stats.py --write notebooks/README.md"
    table = text.split(course_stats.BEGIN, 1)[1].split(course_stats.END, 1)[0]
    rows = [line for line in table.splitlines() if re.match(r"\| \d+ \|", line)]
    expected = [course_stats.notebook_stats(p) for p in sorted((ROOT / "notebooks").glob("*.ipynb"))]
    assert len(rows) == len(expected), (
        "the course table lists other notebooks; fix: scripts/course_stats.py --write notebooks/README.md"
    )
    for line, row in zip(rows, expected):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert row["stem"] in cells[1]
        assert cells[2:5] == [str(row["words"]), str(row["code_lines"]), str(row["exercises"])], (
            f"{row['stem']}: the course table is stale; fix: .venv/bin/python scripts/course_stats.py --write notebooks/README.md"
        )
    assert course_stats.replace_between_markers(f"a\n{course_stats.BEGIN}\nold\n{course_stats.END}\nb", "new") == (
        f"a\n{course_stats.BEGIN}\nnew\n{course_stats.END}\nb"
    )


def _browser_available() -> bool:
    return CHROMIUM.is_file() and importlib.util.find_spec("playwright") is not None


needs_chromium = pytest.mark.skipif(
    not _browser_available(), reason="no /usr/bin/chromium (apt-get install chromium) or playwright"
)


@pytest.mark.browser
@needs_chromium
def test_book_pages_in_chromium_and_the_check_can_fail(tiny_book, tmp_path):
    book_check = importlib.import_module("book_check")
    out = tiny_book[0]
    assert book_check.run(out, str(CHROMIUM), tmp_path / "shots") == 0
    report = json.loads((tmp_path / "shots" / "report.json").read_text())
    assert report["01_tiny"]["math"] >= 2 and report["01_tiny"]["images"] >= 1
    # the same page asking for a script from another host, and one with an unrendered formula: both fail
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    page = (bad / "01_tiny.html").read_text()
    (bad / "01_tiny.html").write_text(page.replace("</head>", '<script src="http://example.invalid/x.js"></script></head>', 1))
    assert book_check.run(bad, str(CHROMIUM), None) == 1
    (bad / "01_tiny.html").write_text(page.replace("<main>", '<main><p class="tex2jax_ignore">raw $$ x^2 $$ left</p>', 1))
    assert book_check.run(bad, str(CHROMIUM), None) == 1
