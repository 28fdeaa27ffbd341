# Every target works from a fresh clone: the first one that needs Python makes .venv and installs.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: install run fetch test lint bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,dev]'
	touch $(STAMP)

run: install
	$(PY) -m tornado_admin --env-file config/development.env dev-token
	$(PY) -m tornado_admin --env-file config/development.env serve

fetch: install
	$(PY) -m tornado_admin --env-file config/development.env fetch

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache bench/out
