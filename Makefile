# The README's commands. Run from the repository root.
#   make test       set up .venv, lint (ruff), run the unit tests, then check the notebooks (nbval): every chapter on
#                   the tiny profile, then every chapter on the paper profile in smoke mode (random weights)
#   make book       set up .venv, execute every notebook (profile "tiny"), build the book into _build/html
#   make smoke      run every chapter on the paper profile at random weights on a small real-format corpus (CPU)
#   make bench      run the full fair benchmarks (several minutes) into _build/bench/ (the book runs the quick ones)
#   make check-determinism   build the book twice from two empty artifact stores and compare the claims tables
#   make clean      remove _build/ and notebooks/_executed/ (keeps artifacts/: trained models are expensive)
#   make distclean  clean, and remove artifacts/ and .venv/ too

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The interpreter that creates the venv (Python >= 3.10), looked up on the PATH *before* .venv/bin is put first.
PYTHON ?= python3
SYSTEM_PATH := $(PATH)

# Everything that executes notebooks or tests runs offline and with the venv's tools first.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PATH := $(CURDIR)/$(VENV)/bin:$(SYSTEM_PATH)

# pip prints one "WARNING: Location '...' is ignored: it is neither a file nor a directory." per package
# for every configured local index that lacks it; that line, and only that line, is filtered out.
PIP_NOISE := ^WARNING: Location '[^']*' is ignored: it is neither a file nor a directory\.$$

.PHONY: help test book smoke bench clean distclean check-determinism

# Two test processes on the two cores (pytest-xdist); nbval gets whole notebooks (--dist loadscope), and the artifact
# store's per-key locks make a chapter wait for a model another one is training instead of training it again.
PARALLEL ?= -n 2
# Where `make test` writes the smoke data and the chapters with their smoke parameters (book/smoke.py --prepare).
SMOKE_DIR := _build/smoke-nbval
# $(call nbval_chapters,DIR): nbval on DIR's chapters in parallel, then DIR's claims table (99_*) alone.
define nbval_chapters
shopt -s nullglob; nbs=(); last=(); for nb in $(1)/[0-9]*.ipynb; do \
  case "$$(basename "$$nb")" in 99_*) last+=("$$nb");; *) nbs+=("$$nb");; esac; done; \
if [ $${#nbs[@]} -eq 0 ]; then echo "==> No notebooks in $(1): notebook checks skipped"; exit 0; fi; \
echo "$(PY) -m pytest $(PARALLEL) --dist loadscope --nbval-lax --nbval-current-env $${nbs[*]}"; \
$(PY) -m pytest $(PARALLEL) --dist loadscope --nbval-lax --nbval-current-env "$${nbs[@]}"; \
if [ $${#last[@]} -gt 0 ]; then $(PY) -m pytest --nbval-lax --nbval-current-env "$${last[@]}"; fi
endef

# Where check-determinism keeps its two artifact stores and the first run's claims table.
DETERMINISM_DIR ?= _determinism

help:
	@sed -n 's/^#   //p' $(firstword $(MAKEFILE_LIST))

$(STAMP): pyproject.toml
	@echo "==> Setting up $(VENV) (the first time: about 2.5 min and 6.6 GB)"
	if [ ! -x $(PY) ]; then PATH="$(SYSTEM_PATH)" $(PYTHON) -m venv $(VENV); fi
	$(PY) -m pip install --progress-bar off -e ".[dev]" 2>&1 | { grep -v -E "$(PIP_NOISE)" || true; }
	touch $@

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest $(PARALLEL) tests
	@echo "==> The chapters on the tiny profile (nbval; the claims table last, once every chapter has recorded)"
	$(call nbval_chapters,notebooks)
	@echo "==> The chapters on the paper profile in smoke mode: random weights, a small corpus in the real formats"
	$(PY) book/smoke.py --prepare $(SMOKE_DIR)
	MMLIB_ARTIFACTS=$(CURDIR)/$(SMOKE_DIR)/artifacts; export MMLIB_ARTIFACTS; $(call nbval_chapters,$(SMOKE_DIR)/notebooks)

book: $(STAMP)
	rm -rf _build
	$(PY) book/build.py

smoke: $(STAMP)
	$(PY) book/smoke.py --keep-going

bench: $(STAMP)
	$(PY) benchmarks/report.py --out _build/bench

check-determinism: $(STAMP)
	rm -rf $(DETERMINISM_DIR) && mkdir -p $(DETERMINISM_DIR)
	MMLIB_ARTIFACTS=$(CURDIR)/$(DETERMINISM_DIR)/a $(PY) book/build.py
	cp _build/claims.json $(DETERMINISM_DIR)/claims_a.json
	MMLIB_ARTIFACTS=$(CURDIR)/$(DETERMINISM_DIR)/b $(PY) book/build.py --compare-claims $(DETERMINISM_DIR)/claims_a.json

clean:
	rm -rf _build notebooks/_executed

distclean: clean
	rm -rf artifacts $(DETERMINISM_DIR) $(VENV) .pytest_cache .hypothesis
