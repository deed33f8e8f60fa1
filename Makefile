# The README's two commands: `make demo` (the main job) and `make test` (everything CI runs).
# Needs only Python 3.10+, git and make; everything else comes from the package index.

PYTHON ?= python3
AIRFLOW_LINE ?= 3.3
VENV ?= .venv
ifneq ($(AIRFLOW_LINE),3.3)
VENV := .venv-$(AIRFLOW_LINE)
endif
LOCK := requirements/constraints-airflow-$(AIRFLOW_LINE).txt
EXTRAS ?= dev
BIN := $(VENV)/bin
comma := ,
STAMP := $(VENV)/.installed-$(AIRFLOW_LINE)-$(subst $(comma),-,$(EXTRAS))
UV_VERSION := 0.13.9
PYTEST_ARGS ?=

.PHONY: install demo test lint typecheck pytest bench bench-smoke test-oldest test-pydantic-ai-oldest lock clean

install: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python 3.10+ is required, found " + sys.version.split()[0])'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip install --quiet --python $(BIN)/python -c $(LOCK) -e '.[$(EXTRAS)]'
	touch $@

demo: install
	$(BIN)/python scripts/demo.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff check --preview --select AIR .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest $(PYTEST_ARGS)  # exit 5 (no tests ran) fails the build like any error

test: lint typecheck pytest

# The oldest supported Airflow line, in its own venv (CI runs this too).
test-oldest:
	$(MAKE) pytest AIRFLOW_LINE=3.1

# The common-ai extra on the lowest pydantic-ai-slim common-ai supports (the lock has the newest), in
# its own venv: the lock with requirements/pydantic-ai-oldest.txt's pins instead of its own, and only
# the tests that run pydantic-ai (not the CLI and log-scan ones, which do not depend on its version).
PAI_OLDEST := .venv-pydantic-ai-oldest
test-pydantic-ai-oldest:
	mkdir -p $(PAI_OLDEST)
	grep -v -E '^(pydantic-ai-slim|pydantic-graph)==' requirements/constraints-airflow-3.3.txt \
		| cat - requirements/pydantic-ai-oldest.txt > $(PAI_OLDEST)/constraints.txt
	$(MAKE) pytest VENV=$(PAI_OLDEST) LOCK=$(PAI_OLDEST)/constraints.txt \
		PYTEST_ARGS="tests/hooks/test_pydantic_ai.py tests/dags/test_llm_dags.py -k 'not connections_test and not token_reaches'"

bench:
	$(MAKE) install EXTRAS=dev,bench
	$(BIN)/python benchmarks/run.py

bench-smoke:
	$(MAKE) install EXTRAS=dev,bench
	$(BIN)/python benchmarks/run.py --smoke

# Re-resolve the pinned versions (needs the package index).
lock: install
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra bench --extra common-ai --universal --python-version 3.10 \
		-c requirements/airflow-3.3.in -o requirements/constraints-airflow-3.3.txt
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra common-ai --universal --python-version 3.10 \
		-c requirements/airflow-3.1.in -o requirements/constraints-airflow-3.1.txt

clean:
	rm -rf .venv .venv-* .demo .mypy_cache .ruff_cache build dist
