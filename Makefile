# Two commands for a fresh machine; both set up the environment first if it is not there yet.
#   make reproduce   run the paper's experiments (Tables 3 and 4) and write results/report.md
#   make test        lint and run the test suite (what CI runs)
# Set-up is idempotent: the virtual environment is (re)installed only when pyproject.toml or
# constraints.txt changed since the last install.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test reproduce bench clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,bench,ray,slurm,tensorboard,data]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

reproduce: $(STAMP)
	$(BIN)/moelab reproduce

bench: $(STAMP)
	$(BIN)/python benchmarks/layer_speed.py

clean-venv:
	rm -rf $(VENV)
