# Two entry points for a fresh machine: `make quickstart` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test quickstart clean-venv

$(STAMP): requirements.txt requirements-dev.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "error: MU-Diff needs Python 3.10 or newer; $(PYTHON) is $$($(PYTHON) --version 2>&1); run make PYTHON=python3.11 (or another >= 3.10)" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

quickstart: $(STAMP)
	$(PY) demo/quickstart.py

clean-venv:
	rm -rf $(VENV)
