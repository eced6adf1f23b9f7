# Set-up and everyday commands. Each target creates/refreshes the virtual environment first,
# so `make demo` and `make test` both work alone on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint typecheck format benchmark benchmark-uci benchmark-scale benchmark-images benchmark-text notebooks docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,demo,dev]"
	touch $(STAMP)

demo: $(STAMP)  ## BNN on scikit-learn's diabetes data: deep ensemble vs SMILE vs MILE, outputs/demo.{nc,png}
	$(PY) -m numpyro_smile.demo

# Test processes (pytest-xdist, one file per worker so module fixtures compile once): JAX
# compilation is mostly single-threaded, so 2 workers on 2 cores take 13 instead of 19 minutes.
TEST_WORKERS ?= 2

test: $(STAMP)  ## the whole suite, statistical tests included (what CI runs)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

test-fast: $(STAMP)  ## quick subset for local iteration
	$(PY) -m pytest -m "not slow" -n $(TEST_WORKERS) --dist loadfile

lint: typecheck  ## ruff (lint and format), after the type checker
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)  ## mypy on the modules listed in pyproject.toml ([tool.mypy] files)
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

benchmark: $(STAMP)  ## step overhead of SMILE vs raw mini-batch gradients
	$(PY) -m benchmarks.step_overhead

benchmark-uci: $(STAMP)  ## every method side by side on UCI airfoil (small budget)
	$(PY) -m benchmarks.uci --data $${SMILE_DATA_DIR:-../shared/data}/airfoil.data --budget small --out outputs/uci_small_airfoil

benchmark-images: $(STAMP)  ## MNIST-1D CNN, every method (small budget, ~15 minutes on 2 cores)
	$(PY) -m benchmarks.images --budget small --out outputs/images_small

benchmark-text: $(STAMP)  ## Shakespeare char transformer, every method (small budget, ~15 minutes)
	$(PY) -m benchmarks.text --budget small --out outputs/text_small

benchmark-scale: $(STAMP)  ## step time and memory at N = 1e4..1e6 (about 5 minutes)
	$(PY) -m benchmarks.scale

notebooks: $(STAMP)  ## execute notebooks/ (full budget, a few minutes) into outputs/notebooks/
	mkdir -p outputs/notebooks
	for nb in notebooks/*.ipynb; do \
		SMILE_NOTEBOOK_BUDGET=$${SMILE_NOTEBOOK_BUDGET:-full} $(VENV)/bin/jupyter execute \
			--timeout=1800 --output='../outputs/notebooks/{notebook_name}' "$$nb" || exit 1; \
	done

DOCS_STAMP := $(VENV)/.installed-docs

$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)  ## the documentation site into outputs/site (strict: any warning fails)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir outputs/site

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
