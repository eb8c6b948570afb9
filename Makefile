# Each target sets up what it needs: a venv with the CPU build of torch pinned.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test bench lint format clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/datamoat demo

test: install
	$(PY) -m pytest

bench: install
	$(PY) bench/run.py

lint: install
	$(VENV)/bin/ruff check datamoat tests bench
	$(VENV)/bin/ruff format --check datamoat tests bench

format: install
	$(VENV)/bin/ruff format datamoat tests bench
	$(VENV)/bin/ruff check --fix datamoat tests bench

clean:
	rm -rf $(VENV) .datamoat .pytest_cache
