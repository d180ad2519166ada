# astro-otf: the two commands that matter are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
HOST ?= 127.0.0.1
PORT ?= 8000
# Debian packages the tests use: STILTS (votlint) checks our VOTables; graphviz draws the
# provenance graph as SVG. (The Slurm tests install and start slurm-wlm and munge themselves,
# through ../shared/infra/slurm-local.sh.)
DEB_TEST_PACKAGES := stilts graphviz

.PHONY: run test install install-test deb-test lint typecheck check clean

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed: $(VENV)/bin/activate pyproject.toml
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/bin/activate pyproject.toml
	$(PIP) install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

## Start the service on http://$(HOST):$(PORT) with SQLite, local workers and the default model.
run: install
	@mkdir -p data
	@echo "astro-otf on http://$(HOST):$(PORT) (data in ./data, config in otf.toml)"
	@echo "Submit the bundled sample image from another terminal:"
	@echo "  $(VENV)/bin/otf submit $$($(PY) -c 'import astro_otf.data as d; print(d.SAMPLE_IMAGE)') --wait --out sample.vot"
	@echo "or with curl:"
	@echo "  curl -si -F IMAGE=@src/astro_otf/data/sample.fits -F PHASE=RUN http://$(HOST):$(PORT)/jobs"
	OTF_CONFIG=$${OTF_CONFIG:-otf.toml} $(VENV)/bin/otf serve --host $(HOST) --port $(PORT)

## Debian packages for the tests (installed only when missing).
deb-test:
	@missing=""; for p in $(DEB_TEST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

lint: install-test
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: install-test
	$(VENV)/bin/mypy

## Install everything the tests need (Python and Debian), then run the whole suite.
test: install-test deb-test lint typecheck
	$(VENV)/bin/pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
