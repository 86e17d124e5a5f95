# `make run` and `make test` each create .venv when missing and install the package with the
# exact versions we test with (constraints.txt; pyproject.toml holds only ranges).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export MUJOCO_GL ?= disable

.PHONY: install run test docs lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -c constraints.txt --upgrade pip
	$(BIN)/python -m pip install -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python recipes/dqs_dmc.py $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --maxschedchunk 1 -q --durations=15 $(ARGS)

docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir site

lint: $(STAMP)
	$(BIN)/ruff check dqs_torchrl recipes tests benchmarks

clean:
	rm -rf $(VENV) outputs multirun
