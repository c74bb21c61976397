#!/usr/bin/env bash
# `make browser-check`: run notebook 01 in a real JupyterLab with headless Chromium (Playwright)
# and check that its plots and widgets render. Screenshots: figures/browser/ (git-ignored).
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
exec "$VPY" scripts/browser_check.py --chromium "$CHROMIUM" "$@"
