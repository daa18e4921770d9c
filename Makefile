# Two entry points, each self-contained on a fresh machine:
#   make demo   runs the main job: trains the digits experiment, then prints
#               test accuracy and the shift-robustness table
#   make test   runs the whole test suite
# Both install kattn (editable, with test and experiment extras) into the
# active virtualenv, or into ./.venv when none is active.

ifdef VIRTUAL_ENV
PYTHON := $(VIRTUAL_ENV)/bin/python
else
PYTHON := .venv/bin/python
endif
STAMP := $(dir $(PYTHON)).kattn-installed
PYTEST_WORKERS ?= 2

DEMO_WORKDIR ?= runs/digits

.PHONY: demo test bench example install

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PYTHON) || python3 -m venv .venv
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e ".[test,experiments]"
	@touch $@

demo: $(STAMP)
	$(PYTHON) -m experiments.train --config experiments/configs/digits.py --workdir $(DEMO_WORKDIR)

example: $(STAMP)
	$(PYTHON) -m experiments.demo

test: $(STAMP)
	$(PYTHON) -m pytest -n $(PYTEST_WORKERS) -q

bench: $(STAMP)
	$(PYTHON) -m experiments.bench_attention
