# kongops.upgrade: the two commands a newcomer runs are `make demo` and `make test`.
# Both set up what they need on a fresh Debian machine (apt packages, Python venv).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum < requirements-dev.txt | cut -d' ' -f1)
LAB := tests/lab/lab
PYTEST_ARGS ?=
# pytest-xdist workers for `make pytest` (0: one process). Each worker brings up its own lab
# (tests/conftest.py gives worker N the lab net KONG_LAB_NET+N) and runs whole test files
# (their module-scoped labs). An e2e upgrade keeps about half a core busy (measured: a
# dual-cluster run of 82 s used 43 s of CPU; the rest is gates, drains and nodes starting), so
# three workers on 2 cores finish the suite sooner than two.
PYTEST_WORKERS ?= 3
# Which tests `make pytest` runs (pytest -m). `make test` leaves out the e2e cases marked extended: more
# faults in a phase and more inputs of a check that another case already takes (tests/e2e/README.md),
# so that CI's run stays within its time; `make test-all` runs every test.
PYTEST_MARKS ?= not extended
# Molecule scenario for `make molecule` (molecule/<name>); `make test` runs the default one.
SCENARIO ?= in_place
# Kong versions `make real-kong` also packages as .debs (the package-install e2e installs 3.9.1).
KONG_PACKAGES ?= 3.9.1

.PHONY: help setup system-packages real-kong demo test test-all lint ruff ansible-lint sanity pytest test-times molecule lab-down clean

help:
	@echo "make demo    lab up (real Kong 3.4.2 -> 3.9.1), dual-cluster upgrade under load, report, lab down"
	@echo "make test    every check and test: ruff, ansible-lint, ansible-test sanity, pytest, molecule ($(SCENARIO)); without the extended e2e cases"
	@echo "make test-all    make test with the extended e2e cases too (about 50 min more on 2 cores)"
	@echo "make setup   only install what the two above need (apt packages, $(VENV))"
	@echo "make real-kong   build real Kong from the realkong kit into the cache (done by make test)"
	@echo "make molecule SCENARIO=dual_cluster|blue_green|in_place|rolling   one molecule scenario on the lab"

setup: system-packages $(STAMP) $(VENV)/.zipcache build/collections/ansible_collections/kongops/upgrade

# The lab's cache of compiled module code (tests/lab/zipcache.py): Ansible's module runs on the
# lab compile ansible-core's module_utils from source every time, and the tests make thousands.
export KONGOPS_LAB_ZIPCACHE ?= $(CURDIR)/tests/output/zipcache
$(VENV)/.zipcache: tests/lab/zipcache.py $(STAMP)
	@$(PY) tests/lab/zipcache.py install
	@touch $@

build/collections/ansible_collections/kongops/upgrade:
	@mkdir -p build/collections/ansible_collections/kongops
	@ln -sfn ../../../.. $@

system-packages:
	@tests/lab/setup-system.sh

$(STAMP): requirements-dev.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@rm -f $(VENV)/.installed-* && touch $@

demo: setup
	@tests/lab/demo.sh

test: setup real-kong lint sanity pytest molecule

test-all:
	$(MAKE) test PYTEST_MARKS=

# Real Kong for the lab: every version the realkong kit builds, into the cache outside the
# checkout (once; `tests/lab/lab kong list` says what is there). Without a kit this says so and
# the tests that need real Kong are skipped with that reason (failed under CI=true).
real-kong: setup
	@$(LAB) kong build --if-kit
	@$(LAB) kong package --if-kit $(KONG_PACKAGES)

lint: ruff ansible-lint

ruff:
	$(VENV)/bin/ruff check .

ansible-lint:
	PATH=$(VENV)/bin:$$PATH $(VENV)/bin/ansible-lint --profile production

sanity:
	VENV=$(VENV) tests/sanity/run.sh

pytest:
	$(PY) -m pytest -n $(PYTEST_WORKERS) -m "$(PYTEST_MARKS)" $(PYTEST_ARGS)
	@$(PY) tests/durations.py

# Suite time by directory and every e2e test's time, from the last `make pytest`.
test-times:
	@$(PY) tests/durations.py

# Create (lab up), converge (the upgrade playbook), idempotence, verify, destroy (lab down);
# honours KONG_LAB_NET and KONG_LAB_RUN_DIR. See molecule/README.md.
molecule: setup
	PATH=$(abspath $(VENV))/bin:$$PATH $(VENV)/bin/molecule test -s $(SCENARIO)

lab-down:
	@$(LAB) down

clean: lab-down
	rm -rf tests/output .pytest_cache .ruff_cache
