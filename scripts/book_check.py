#!/usr/bin/env python3
"""Real-browser check of the book: every page of ``results/book/`` in headless Chromium, offline.

Called by ``scripts/browser_check.sh`` (``make browser-check``) and by the browser tests. Serves
the book folder from a local HTTP server on 127.0.0.1 and opens ``index.html`` and every page
listed in ``book.json`` with Playwright driving Debian's ``/usr/bin/chromium`` (no browser
download). On each page it checks that

* the browser console shows no error and no script raised,
* every image loaded (``naturalWidth > 0``),
* math is typeset: MathJax finished, no MathJax error, a page whose Markdown holds TeX shows
  MathJax output, and no raw ``$$`` or ``$...$`` is left in the Markdown text,
* no request went anywhere but the local server (every request is recorded; ``data:`` URLs are
  local too),
* solution and set-up cells are collapsed and the mode banner is there (notebook pages).

Screenshots of the index and of every page's top go to ``--shots`` (default
``figures/browser/book/``, git-ignored). Exit 0 when every page passes, 1 when one fails, 2 for
set-up problems (no book, no browser).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]  # fmt: skip

# After MathJax has typeset: what the page shows. Runs in the page.
INSPECT_JS = """() => {
  const imgs = Array.from(document.images).map(i => ({ok: i.complete && i.naturalWidth > 0, src: (i.src || '').slice(0, 80)}));
  const md = Array.from(document.querySelectorAll('.jp-RenderedMarkdown, main > p, main li, main td'));
  let text = '';
  for (const el of md) {
    const clone = el.cloneNode(true);
    clone.querySelectorAll('code, pre, script, .MathJax_Preview, .MJX_Assistive_MathML').forEach(n => n.remove());
    text += '\\n' + clone.textContent;
  }
  const raw = [];
  const dd = text.match(/\\$\\$[^]{0,60}/g); if (dd) raw.push(...dd);
  const inl = text.match(/\\$[^\\s$][^$\\n]{0,80}\\$/g); if (inl) raw.push(...inl);
  return {
    images: imgs,
    math: document.querySelectorAll('.MathJax, .MathJax_Display, .MathJax_SVG, mjx-container').length,
    mathErrors: document.querySelectorAll('.MathJax_Error, .merror, [class*="mjx-merror"]').length
      + (document.body.textContent.includes('Math Processing Error') ? 1 : 0),
    rawTex: raw.slice(0, 5),
    texInSource: Array.from(document.querySelectorAll('script[type^="math/tex"]')).length,
    banner: document.querySelectorAll('.book-banner').length,
    openCollapsed: Array.from(document.querySelectorAll('.jp-Cell.celltag_solution details, .jp-Cell.celltag_setup details'))
      .filter(d => d.open).length,
    collapsed: document.querySelectorAll('details.book-collapsed').length,
    solutionCells: document.querySelectorAll('.jp-Cell.celltag_solution').length,
    widgets: document.querySelectorAll('.book-widget').length,
  };
}"""

WAIT_MATHJAX_JS = """() => new Promise(resolve => {
  if (!window.MathJax || !MathJax.Hub) { resolve('no MathJax'); return; }
  MathJax.Hub.Queue(() => resolve('typeset'));
})"""


def log(msg: str) -> None:
    print(f"book-check: {msg}", flush=True)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # no access log on stderr
        pass


def serve(folder: Path) -> tuple[http.server.ThreadingHTTPServer, int]:
    """A local HTTP server for ``folder`` on 127.0.0.1, a free port, in a daemon thread."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def is_local(url: str, port: int) -> bool:
    """A request the book may make: to our own server, or a ``data:``/``blob:``/``about:`` URL."""
    parsed = urlparse(url)
    if parsed.scheme in ("data", "blob", "about"):
        return True
    return parsed.scheme == "http" and parsed.hostname == "127.0.0.1" and parsed.port == port


def check_page(context, url: str, port: int, shot: Path | None, notebook: bool) -> tuple[list[str], dict]:
    """Open ``url`` in a fresh tab; return ``(failures, what was seen)``."""
    page = context.new_page()
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"script error: {e}"))
    page.on("request", lambda r: requests.append(r.url))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url} ({r.failure})"))
    page.goto(url, wait_until="load", timeout=60_000)
    typeset = page.evaluate(WAIT_MATHJAX_JS)
    page.wait_for_timeout(300)
    seen = page.evaluate(INSPECT_JS)
    seen["typeset"] = typeset
    if shot is not None:
        page.screenshot(path=str(shot), full_page=False)
    page.close()
    outside = sorted({u for u in requests if not is_local(u, port)})
    failures = list(errors)
    failures += [f"request outside localhost: {u}" for u in outside]
    failures += [f"image not loaded: {i['src']}" for i in seen["images"] if not i["ok"]]
    if typeset != "typeset":
        failures.append("MathJax did not load")
    if seen["mathErrors"]:
        failures.append(f"{seen['mathErrors']} MathJax error(s)")
    if seen["rawTex"]:
        failures.append(f"raw TeX left in the text: {seen['rawTex']}")
    if seen["texInSource"] and not seen["math"]:
        failures.append(f"{seen['texInSource']} formulas found but none typeset")
    if notebook:
        if not seen["banner"]:
            failures.append("no mode banner")
        if seen["openCollapsed"]:
            failures.append(f"{seen['openCollapsed']} solution/set-up cell(s) not collapsed")
    seen["requests"] = len(requests)
    seen["images"] = len(seen["images"])
    return failures, seen


def run(book: Path, chromium: str, shots: Path | None) -> int:
    from playwright.sync_api import sync_playwright

    manifest_path = book / "book.json"
    if not manifest_path.is_file() or not (book / "index.html").is_file():
        log(f"error: no book in {book} (book.json, index.html); fix: make book FAST=1")
        return 2
    pages = [p["stem"] for p in json.loads(manifest_path.read_text(encoding="utf-8"))["pages"]]
    if shots is not None:
        shots.mkdir(parents=True, exist_ok=True)
    server, port = serve(book)
    report: dict[str, dict] = {}
    failed = 0
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
            context = browser.new_context(viewport={"width": 1300, "height": 1000})
            for name, notebook in [("index", False), *((p, True) for p in pages)]:
                url = f"http://127.0.0.1:{port}/{name}.html"
                shot = shots / f"{name}.png" if shots is not None else None
                failures, seen = check_page(context, url, port, shot, notebook)
                report[name] = {"failures": failures, **seen}
                failed += bool(failures)
                status = "OK" if not failures else "FAIL: " + "; ".join(failures[:5])
                log(f"{name}: {status} ({seen['images']} images, {seen['math']} formulas, {seen['widgets']} widgets, "
                    f"{seen['collapsed']} collapsed, {seen['requests']} requests, all local: {not any('outside' in f for f in failures)})")  # fmt: skip
            browser.close()
    finally:
        server.shutdown()
    if shots is not None:
        (shots / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    log(f"{len(report)} pages checked, {failed} failed" + (f"; screenshots in {shots}" if shots else ""))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--book", type=Path, default=ROOT / "results" / "book", help="the built book (default results/book)")
    ap.add_argument("--chromium", default="/usr/bin/chromium", help="Chromium executable (Debian package)")
    ap.add_argument("--shots", type=Path, default=ROOT / "figures" / "browser" / "book", help="screenshot folder")
    args = ap.parse_args(argv)
    if not Path(args.chromium).is_file():
        log(f"error: no Chromium at {args.chromium}; fix: apt-get install chromium (or pass --chromium PATH)")
        return 2
    return run(args.book, args.chromium, args.shots)


if __name__ == "__main__":
    sys.exit(main())
