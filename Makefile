# Every target sets itself up from nothing: a fresh clone needs only python3 (>= 3.10) and make.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
export AIRFLOW_HOME ?= $(CURDIR)/.airflow
export AIRFLOW__CORE__LOAD_EXAMPLES ?= False
export AIRFLOW__CORE__DAGS_FOLDER ?= $(CURDIR)/dags
export NO_GCE_CHECK ?= true

.PHONY: venv install demo test test-ui lint typecheck bench test-cluster compose-config docs dist clean

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -qq --upgrade pip uv  # -qq: errors only (a machine's find-links warnings are noise)
	touch $@

$(VENV)/.installed: $(VENV)/.created pyproject.toml tfhub-cache/pyproject.toml
	$(UV) pip install --quiet --python $(PY) -e ./tfhub-cache -e ".[test]"
	touch $@

venv: $(VENV)/.created
install: $(VENV)/.installed

# Runs the example DAG against a demo hub on 127.0.0.1 (a generated model served like tfhub.dev).
# scripts/ is not part of the wheel: the demo needs this checkout (dags/, .airflow/).
demo: install
	$(PY) scripts/demo.py

# The full suite: unit, integration (loopback hub, GCS emulator, Airflow on SQLite, tensorflow_hub).
test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(PY) scripts/check_imports.py
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q -ra --durations=15 $(PYTEST_ARGS)

# Airflow's own UI in headless Chromium (Debian's chromium + chromium-driver, installed when missing):
# the api-server on 127.0.0.1 with SQLite in a temp AIRFLOW_HOME; screenshots in ui_tests/screenshots/.
test-ui: install
	bash ui_tests/install_browser.sh
	$(VENV)/bin/pytest -q -rs -p no:cacheprovider ui_tests $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(PY) scripts/check_imports.py

typecheck: install
	$(VENV)/bin/mypy

bench: install
	$(PY) benchmarks/run.py $(BENCH_ARGS)
	$(PY) benchmarks/fleet.py $(FLEET_ARGS)

test-cluster: install
	bash tests/cluster/run.sh

# Both distributions of this repository, wheel and sdist each, into dist/: the library (tfhub-cache/)
# and the provider (the root pyproject.toml), one version. `pip install dist/*.whl` installs both.
DIST ?= dist
dist: venv
	rm -rf $(DIST)
	$(UV) build --out-dir $(DIST) tfhub-cache
	$(UV) build --out-dir $(DIST) .
	ls $(DIST)

compose-config:
	bash docker/validate.sh

# The documentation site (mkdocs.yml, pages in docs/, API reference from docstrings) into site/.
# --strict: a broken link, anchor or API reference fails the build.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) dist .airflow .pytest_cache .mypy_cache .ruff_cache benchmarks/.work site
