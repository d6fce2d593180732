# qkv: `make demo` and `make test` are all a newcomer needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.qkv-installed
# Where the CPU build of torch lives on these machines (pip also reads it from pip.conf).
WHEELS ?= /opt/wheels
FIND_LINKS := $(if $(wildcard $(WHEELS)),--find-links $(WHEELS),)
PYTEST_ARGS ?=

.PHONY: setup browser fashion speech demo test lint bench docs clean

setup: $(STAMP)

# Re-runs only when the lock or the package metadata changes: seconds when already done.
$(STAMP): requirements-lock.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(FIND_LINKS) -r requirements-lock.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@$(PY) -c "import torch; assert torch.version.cuda is None, 'a CUDA build of torch was installed'; print('qkv environment ready: torch', torch.__version__)"
	@touch $(STAMP)

demo: setup fashion speech
	$(VENV)/bin/qkv demo

# The browser tests drive Debian's chromium; install it when missing (skipped, with a warning, without root).
browser:
	@command -v chromium >/dev/null 2>&1 || { echo "installing Debian's chromium for the browser tests..."; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "warning: could not install chromium; the browser tests will be skipped"; }

# Fashion-MNIST comes from Debian's dataset-fashion-mnist; install it when missing (without root: a warning,
# and qkv.vision names the install command when the data is asked for).
fashion:
	@test -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz || { echo "installing Debian's dataset-fashion-mnist..."; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
	  || echo "warning: could not install dataset-fashion-mnist; Fashion-MNIST will be unavailable"; }

# Spoken numbers (qkv.speech) come from Debian's espeak-ng and flite; install them when missing (without root:
# a warning, and qkv.speech names the install command when speech is generated).
speech:
	@command -v espeak-ng >/dev/null 2>&1 && command -v flite >/dev/null 2>&1 || { echo "installing Debian's espeak-ng and flite..."; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng flite >/dev/null) \
	  || echo "warning: could not install espeak-ng and flite; the speech tests will be skipped"; }

test: setup browser fashion speech
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(MAKE) --no-print-directory docs
	QKV_DOCS_SITE=$(SITE) $(PY) -m pytest -n 2 -q $(PYTEST_ARGS)

# The documentation site (mkdocs.yml): offline, and --strict, so a broken link or reference fails.
SITE ?= site
docs: setup
	@start=$$(date +%s); NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir $(SITE) \
	  && echo "docs: built $(SITE)/index.html in $$(( $$(date +%s) - start )) s"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff format --check .

bench: setup
	$(PY) -m benchmarks.attention_dense
	$(PY) -m benchmarks.attention_long

clean:
	rm -rf $(VENV) build site src/*.egg-info .pytest_cache .ruff_cache
