# vault-raft: everything sets itself up (venv + pinned packages) on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

LINT   := $(VENV)/.lint-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup demo test test-fast lint bench clean help

help:
	@echo "make demo   - start a local 3-node cluster, enroll, guess wrong, recover, stop"
	@echo "make test   - run the whole test suite (real node processes on 127.0.0.1)"
	@echo "make test-fast - the tests that start no node process and are not slow"
	@echo "make lint   - ruff and mypy, configured in pyproject.toml"
	@echo "make bench  - run the benchmarks (see bench/README.md)"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[test,bench]'
	@# opaque-ke bindings are optional (interop tests skip without them).
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[interop]' >/dev/null 2>&1 \
	  || echo "note: opaque-ke bindings unavailable; interop tests will be skipped"
	@rm -f $(VENV)/.installed-*; touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	@$(VENV)/bin/vault-raft demo

test: $(STAMP)
	@$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# No clusters (the `cluster` marker: tests/conftest.py fails an unmarked test that starts
# node processes) and no `slow` tests.
test-fast: $(STAMP)
	@$(PY) -m pytest -q -p no:cacheprovider -m "not cluster and not slow" $(PYTEST_ARGS)

$(LINT): $(STAMP)
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[lint]'
	@rm -f $(VENV)/.lint-*; touch $(LINT)

lint: $(LINT)
	@rc=0; $(VENV)/bin/ruff check . || rc=1; $(VENV)/bin/mypy || rc=1; exit $$rc

bench: $(STAMP)
	@$(VENV)/bin/vault-raft bench --out bench/results

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
