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
DEB_TEST_PACKAGES := stilts graphviz chromium chromium-driver libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1

.PHONY: run test install install-test deb-test lint typecheck check clean train peers science apps

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
	@echo "  $(VENV)/bin/otf --url http://$(HOST):$(PORT) submit $$($(PY) -c 'import astro_otf.data as d; print(d.SAMPLE_IMAGE)') --wait --out sample.vot"
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
	$(VENV)/bin/ruff check src tests bench training
	$(VENV)/bin/ruff format --check src tests bench training
	$(VENV)/bin/lint-imports --no-cache

typecheck: install-test
	$(VENV)/bin/mypy

## The Python environments of the command apps (PyBDSF, Aegean): one venv each under
## $(APPS_DIR), built with the system python3 from the pinned requirements beside each app's
## manifest, only when missing or when the requirements changed (a stamp in each venv).
## `make run` does not need them: until they exist those apps are listed as unavailable.
APPS_DIR ?= .apps
apps:
	$(PYTHON) src/astro_otf/models/apps/build_envs.py --apps-dir $(APPS_DIR)

## Install everything the tests need (Python and Debian), then run the whole suite.
test: install-test deb-test apps lint typecheck
	$(VENV)/bin/pytest -q -p no:cacheprovider

## Retrain the shipped detector from its fixed seed (CPU PyTorch, about 26 min on 2 cores),
## then export its ONNX files, manifest and threshold into src/astro_otf/models/zoo.
train: install
	$(PIP) install --quiet -e '.[train]'
	PYTHONPATH=. $(PY) -m training.train --out build/train
	PYTHONPATH=. $(PY) -m training.export --checkpoint build/train/detector.pt

## The peer finders bench/science.py compares with (PyBDSF, Aegean, sep, photutils), in a
## virtual environment of their own. AegeanTools 2.3.5 needs numpy < 2.4.
PEERS := .venv-peers
$(PEERS)/.installed:
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/pip install --quiet astropy "numpy<2.4" scipy bdsf aegeantools sep photutils scikit-image pandas
	touch $@

peers: $(PEERS)/.installed

## Evaluate the detector against truth and the peers; updates the table in the model card.
science: install-test peers
	PYTHONPATH=. $(PY) bench/science.py --peers-python $(PEERS)/bin/python \
	  --card src/astro_otf/models/zoo/radio-detector/2.0/MODEL_CARD.md

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
