# Two commands do all the set-up on a fresh machine:
#   make run    create .venv, install, run the whole workflow on the embedded default, write the HTML report
#   make test   create .venv if missing, run the test suite
PYTHON ?= python3
VENV ?= .venv
CORES ?= all
REPORT ?= results/report.html
BIN := $(VENV)/bin
STAMP := $(VENV)/.apc-installed

.PHONY: run test env dry-run report ui clean-results

env: $(STAMP)

$(STAMP): pyproject.toml requirements-embedded.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# --no-compile: bytecode is written on first import, for the modules used only (halves the install time)
	$(BIN)/python -m pip install --quiet --no-compile torch==2.13.0
	$(BIN)/python -m pip install --quiet --no-compile -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-compile --no-deps -r requirements-embedded.txt
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) $(ARGS)
	$(BIN)/snakemake --report $(REPORT) $(ARGS)

dry-run: $(STAMP)
	$(BIN)/snakemake -n $(ARGS)

report: $(STAMP)
	$(BIN)/snakemake --report $(REPORT) $(ARGS)

ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///results/mlflow.db

test: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)
