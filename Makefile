# mbus-ua-logger: one setup, two commands.
#   make demo   sets everything up and runs the whole system on simulated meters
#   make test   sets everything up and runs every test (unit, HIL, PostgreSQL)
# Everything the targets need is installed here from Debian, PyPI and npm.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
NODE_DIR := tests/node
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := swtpm swtpm-tools tpm2-tools libtss2-dev libtss2-tcti-swtpm0 pkg-config \
	socat strace systemd gcc python3-dev python3-venv postgresql openssl
DURATION ?= 0
DEMO_DIR ?=
PYTEST_ARGS ?=

.PHONY: all setup apt venv node test unit hil lint typecheck demo bench deb lock clean

all: test

setup: apt venv node

# Debian packages: installed only when one is missing, so a ready machine pays nothing.
apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	command -v npm >/dev/null 2>&1 || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(VENV)/.stamp: requirements/dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements/dev.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $@

venv: apt $(VENV)/.stamp

# MicroPython (WebAssembly build under node) and node-opcua for interop tests.
$(NODE_DIR)/node_modules/.stamp: $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

node: apt $(NODE_DIR)/node_modules/.stamp

test: setup
	$(MAKE) lint
	$(PY) -m pytest $(PYTEST_ARGS)

unit: setup
	$(PY) -m pytest tests $(PYTEST_ARGS)

hil: setup
	$(PY) -m pytest hil $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m tests.check_boundaries
	$(PY) -m deploy.debian.lock --check

demo: setup
	$(PY) -m hil.demo --duration $(DURATION) $(if $(DEMO_DIR),--dir $(DEMO_DIR))

bench: setup
	$(PY) -m tests.bench

deb: setup
	$(PY) -m deploy.debian.build --out dist

# Re-resolve the pinned versions (run on purpose, commit the result).
lock:
	rm -rf build/lockenv && $(PYTHON) -m venv build/lockenv
	build/lockenv/bin/pip install -q --upgrade pip
	build/lockenv/bin/pip install -q ".[receiver,dev]"
	{ echo "# Exact versions for development, tests and CI (make test). Regenerate with 'make lock'."; \
	  build/lockenv/bin/pip freeze --exclude mbus-ua-logger; } > requirements/dev.lock
	$(PY) -m deploy.debian.lock

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
