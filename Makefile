# make run  : create .venv, install adlab, train + test the default model on the built-in dataset
# make test : create .venv, install adlab with dev extras, run the whole test suite (slow tests too,
#             e.g. tests/test_packaging.py: a wheel installed into a fresh venv, adlab train)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-fast lint format clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) train.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks setup.py train.py predict.py evaluate.py report.py export.py
	$(VENV)/bin/ruff format --check src tests benchmarks setup.py train.py predict.py evaluate.py report.py export.py

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks setup.py train.py predict.py evaluate.py report.py export.py
	$(VENV)/bin/ruff check --fix src tests benchmarks setup.py train.py predict.py evaluate.py report.py export.py

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
