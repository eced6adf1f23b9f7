# Set-up and everyday commands. Each target creates/refreshes the virtual environment first,
# so `make demo` and `make test` both work alone on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint format benchmark benchmark-uci clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,demo]"
	touch $(STAMP)

demo: $(STAMP)  ## SMILE on scikit-learn's diabetes data: summary table + outputs/demo.png
	$(PY) -m numpyro_smile.demo

test: $(STAMP)  ## the whole suite, statistical tests included (what CI runs)
	$(PY) -m pytest

test-fast: $(STAMP)  ## quick subset for local iteration
	$(PY) -m pytest -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

benchmark: $(STAMP)  ## step overhead of SMILE vs raw mini-batch gradients
	$(PY) -m benchmarks.step_overhead

benchmark-uci: $(STAMP)  ## every method side by side on UCI airfoil (small budget)
	$(PY) -m benchmarks.uci --data $${SMILE_DATA_DIR:-../shared/data}/airfoil.data --budget small --out outputs/uci_small_airfoil

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
