#!/usr/bin/env bash
# `make browser-check`, in headless Chromium (Playwright), two checks:
#  1. the book (scripts/book_check.py): every page of results/book/ served from 127.0.0.1, with no
#     console error, every image loaded, math typeset and no request outside localhost. When there
#     is no book yet it is built first in fast mode (`make book FAST=1`; cached runs are reused).
#  2. notebook 01 live in JupyterLab (scripts/browser_check.py): its plots render and its widget
#     redraws when a control changes, which a static book cannot show.
# `--book-only` / `--lab-only` run one of them. Screenshots: figures/browser/ (git-ignored).
#
# Needs Debian's `chromium` (installed here with apt-get when missing and running as root) and the
# `playwright` Python package (in requirements.txt). Playwright drives /usr/bin/chromium; it never
# downloads a browser (`playwright install` is not used).
set -euo pipefail
cd "$(dirname "$0")/.."

VPY=${VPY:-.venv/bin/python}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}

if [[ ! -x $CHROMIUM ]]; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "browser-check: installing Debian's chromium package"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "browser-check: error: $CHROMIUM not found; fix: sudo apt-get install chromium (or set CHROMIUM=/path)" >&2
        exit 2
    fi
fi
if ! "$VPY" -c "import playwright" 2>/dev/null; then
    echo "browser-check: error: the playwright package is missing; fix: make venv (it is in requirements.txt)" >&2
    exit 2
fi
which=${1:-both}
case $which in
    --book-only | --lab-only | both) ;;
    *) echo "browser-check: error: unknown option $which; fix: --book-only, --lab-only or nothing" >&2; exit 2 ;;
esac
rc=0
if [[ $which != --lab-only ]]; then
    if [[ ! -f results/book/book.json ]]; then
        echo "browser-check: no book in results/book yet; building it in fast mode (make book FAST=1)"
        "$VPY" scripts/build_book.py --fast || rc=1
    fi
    "$VPY" scripts/book_check.py --chromium "$CHROMIUM" || rc=1
fi
if [[ $which != --book-only ]]; then
    "$VPY" scripts/browser_check.py --chromium "$CHROMIUM" || rc=1
fi
exit $rc
