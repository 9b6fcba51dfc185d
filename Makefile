# Sparse Networks, by hand: `make book` renders the book, `make test` runs every test.
# Both create .venv on first use (CPU torch first, so pip never pulls a CUDA build).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NB ?= notebooks/*.ipynb

.PHONY: book test unit notebooks execute robust lint bench dist compat clean venv lm-weights

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $(STAMP)

book: $(STAMP)
	$(BIN)/jupyter-book build . -W -n --keep-going
	@echo "book: open _build/html/index.html"

# Every test: unit + property tests, every notebook under strict nbval, the book build from
# scratch (autodoc reads this checkout's sparsekit) and checks on its HTML (tests/test_html.py).
test: $(STAMP)
	$(BIN)/python -m pytest
	rm -rf _build
	PYTHONPATH=$(CURDIR) $(BIN)/jupyter-book build . -W -n --keep-going
	SPARSEKIT_BOOK_HTML=_build/html $(BIN)/python -m pytest -o addopts="-p no:cacheprovider" tests/test_html.py

unit: $(STAMP)
	$(BIN)/python -m pytest tests

notebooks: $(STAMP)
	$(BIN)/python -m pytest notebooks

# Re-run notebooks in place (all, or NB=notebooks/01_unstructured.ipynb), with widget state.
execute: $(STAMP)
	@for nb in $(NB); do \
		echo "executing $$nb"; start=$$(date +%s); \
		$(BIN)/jupyter execute --inplace $$nb || exit 1; \
		echo "$$nb: $$(( $$(date +%s) - start )) s"; \
	done

# Every chapter's asserts at seed bases 100 and 200 and with ATen's portable float path
# (ATEN_CPU_CAPABILITY=default): plain execution, a table chapter x run. Not part of `make test`
# (about 20 minutes); writes benchmarks/results/robust_cpu.md. ROBUST_JOBS notebooks at a time.
ROBUST_JOBS ?= 2
robust: $(STAMP)
	$(BIN)/python tests/robust.py --jobs $(ROBUST_JOBS)

lint: $(STAMP)
	$(BIN)/ruff check sparsekit tests benchmarks

# Re-train chapter 7's language model with its recipe (about 8 minutes on 2 cores) and check that the
# file has the shipped SHA-256 (it does on the CPU it was made on, 2 threads; see sparsekit/lm.py).
lm-weights: $(STAMP)
	$(BIN)/python -m sparsekit.lm --out /tmp/byte_lm_check.pt --check

# CPU benchmarks (ratios measured side by side in one run; run on a quiet machine).
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_select.py
	$(BIN)/python benchmarks/bench_execute.py --check
	$(BIN)/python benchmarks/bench_structured.py --check

# Distributed selection and calibration on two gloo processes (chapter 8); writes benchmarks/results/dist_cpu.md.
dist: $(STAMP)
	$(BIN)/torchrun --standalone --nproc-per-node 2 benchmarks/dist_prune.py

# tests/ under the declared floors (torch 2.7.1 + numpy 1.24; torch 2.7.1 + numpy < 2.4 for the
# kernels' CPU interpreter) and the newest torch, each in a throwaway venv under /tmp (CUDA wheels, 5-7 GB each,
# deleted after its run); writes benchmarks/results/compat.md. Not part of `make test` nor CI.
# COMPAT_ARGS="--only 0 --find-links DIR" runs one environment from pre-downloaded wheels.
compat: $(STAMP)
	$(BIN)/python benchmarks/compat.py $(COMPAT_ARGS)

clean:
	rm -rf _build
