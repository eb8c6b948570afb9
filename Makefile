# Each target sets up what it needs: a venv installed from the lock file.
# requirements.lock pins every dependency, direct and transitive, at the versions
# the whole suite passed with; `make lock` regenerates it (a deliberate commit).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements.lock
# pip-compile's own flags; the lock's header repeats them, so a reader can rerun it.
COMPILE := pip-compile --quiet --extra dev --strip-extras --allow-unsafe --no-emit-index-url \
	--no-emit-find-links --constraint constraints.txt --output-file $(LOCK) pyproject.toml

.PHONY: demo-photos install demo test test-latest bench lint format lock lock-upgrade clean

$(STAMP): pyproject.toml constraints.txt $(LOCK)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

demo: install
	scripts/get-fashion-mnist.sh
	$(VENV)/bin/datamoat demo

# The photo flow: synthetic JPEGs -> shards -> a trained model -> registry -> served JPEG -> signed bundle.
demo-photos: install
	scripts/get-fashion-mnist.sh
	$(VENV)/bin/datamoat demo --photos

test: install
	$(PY) -m pytest

# The newest versions pyproject's ranges allow (torch stays pinned), in a venv of
# their own, to see what raising the lock would break before doing it.
test-latest:
	rm -rf .venv-latest && python3 -m venv .venv-latest
	.venv-latest/bin/python -m pip install -q --upgrade -c constraints.txt -e '.[dev]'
	.venv-latest/bin/python -m pip freeze --exclude-editable > .venv-latest/freeze.txt
	.venv-latest/bin/python -m pytest

# `make lock` re-resolves after pyproject.toml changed, keeping every pin it can;
# `make lock-upgrade` moves every pin to the newest version the ranges allow.
# Run `make test` on the result and commit it alone, saying what moved.
lock: install
	PATH=$(VENV)/bin:$$PATH $(COMPILE)

lock-upgrade: install
	PATH=$(VENV)/bin:$$PATH $(COMPILE) --upgrade

bench: install
	$(PY) bench/run.py

lint: install
	$(VENV)/bin/ruff check datamoat tests bench scripts
	$(VENV)/bin/ruff format --check datamoat tests bench scripts
	$(VENV)/bin/mypy datamoat
	$(PY) scripts/check_lock.py $(LOCK)

format: install
	$(VENV)/bin/ruff format datamoat tests bench scripts
	$(VENV)/bin/ruff check --fix datamoat tests bench scripts

clean:
	rm -rf $(VENV) .venv-latest .datamoat .pytest_cache
