# mtrd: `make run` starts the service on its defaults, `make test` runs every check.
# Both work on a fresh Debian machine: they create a virtualenv, install the project and,
# when run as root, the OS packages they need.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# `make run` needs the service alone: the test and lint tools are `make test`'s.
RUN_STAMP := $(VENV)/.runtime-stamp

RUN_OS_PACKAGES := mtr-packet:mtr-tiny
TEST_OS_PACKAGES := $(RUN_OS_PACKAGES) ip:iproute2 nft:nftables iptables:iptables tcpdump:tcpdump curl:curl redis-server:redis-server

.PHONY: run test lint typecheck unit lab venv os-deps-run os-deps-test clean container-test bench bench-small os-deps-bench

run: os-deps-run $(RUN_STAMP)
	$(BIN)/mtrd serve

# Branch coverage of the mtrd package is measured over the unit tests and printed (no
# threshold). The lab tests run apart and untraced: they race real processes and real time,
# and tracing every line slows the reactor enough that a burst of thousands of probes misses
# its deadlines.
test: os-deps-test $(STAMP) lint typecheck
	$(BIN)/pytest -m "not lab" --cov=mtrd --cov-branch --cov-report=term
	$(BIN)/pytest -m lab

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/vulture

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -m "not lab and not redis"

lab: os-deps-test $(STAMP)
	$(BIN)/pytest -m lab

venv: $(STAMP)

# Builds the container image with podman (a stand-in debian:bookworm-slim is made with
# debootstrap) and runs it: see .ci/container-test.
container-test: $(STAMP)
	bash .ci/container-test

# Benchmarks in the lab; figures go to bench/results/. bench-small is CI's quick run.
bench: os-deps-test os-deps-bench $(STAMP)
	$(BIN)/python -m bench --mode full

bench-small: os-deps-test os-deps-bench $(STAMP)
	$(BIN)/python -m bench --mode small

os-deps-bench:
	@$(MAKE) --no-print-directory os-packages PACKAGES="$(call missing,wrk:wrk traceroute:traceroute scamper:scamper)"

define new-venv
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || $(MAKE) --no-print-directory os-packages PACKAGES=python3-venv
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
endef

$(STAMP): pyproject.toml
	$(new-venv)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# Editable, so `make run` serves the checkout's code as it is now.
$(RUN_STAMP): pyproject.toml
	$(new-venv)
	$(BIN)/pip install --quiet -e .
	touch $@

os-deps-run:
	@$(MAKE) --no-print-directory os-packages PACKAGES="$(call missing,$(RUN_OS_PACKAGES))"

# The web page's tests drive Debian's chromium through its chromedriver.
TEST_OS_PACKAGES += chromedriver:chromium-driver chromium:chromium

os-deps-test:
	@$(MAKE) --no-print-directory os-packages PACKAGES="$(call missing,$(TEST_OS_PACKAGES))"

# $(call missing,cmd:pkg ...) lists the packages whose command is not installed.
missing = $(strip $(foreach pair,$(1),$(if $(shell PATH="$$PATH:/usr/sbin:/sbin" command -v $(word 1,$(subst :, ,$(pair))) 2>/dev/null),,$(word 2,$(subst :, ,$(pair))))))

os-packages:
	@if [ -n "$(strip $(PACKAGES))" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing OS packages: $(PACKAGES)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(PACKAGES); \
	  else \
	    echo "missing OS packages: $(PACKAGES) (run as root, or install them with apt-get)"; \
	  fi; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .coverage
