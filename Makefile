# Two commands do all the set-up on a fresh machine:
#   make run    create .venv, install, run the whole workflow on the embedded default, write the HTML report
#   make test   create .venv if missing, run the test suite
#   make docs   redraw the docs' plots and re-render every generated block of README.md and docs/*.md
#               from the raw outputs committed under docs/results/ (make collect refreshes docs/results/default)
PYTHON ?= python3
VENV ?= .venv
CORES ?= all
REPORT ?= results/report.html
BIN := $(VENV)/bin
STAMP := $(VENV)/.apc-installed

.PHONY: run test env dry-run report ui clean-results docs collect

# Python writes the bytecode of the modules a job imports into .venv (and src/, both ignored by git) even where
# the calling environment sets PYTHONDONTWRITEBYTECODE: else every job compiles all it imports, every time.
unexport PYTHONDONTWRITEBYTECODE

env: $(STAMP)

$(STAMP): pyproject.toml requirements-embedded.txt
	$(PYTHON) -m venv $(VENV)
# torch through pip, which honours a local wheel folder or index in pip's own configuration; the rest
# through uv, which installs the same pinned versions in parallel. No bytecode is compiled here: compiling
# every installed package took 34 s of a fresh environment's 48, and a run imports a small part of them.
# Every target below lets Python write the bytecode of what it imports instead (the unexport above), so the
# first job that imports a module compiles it once for every later job.
	$(BIN)/python -m pip install --quiet --no-compile torch==2.13.0 uv==0.13.9
	$(BIN)/python -m uv pip install --quiet --python $(BIN)/python -e '.[dev]'
	$(BIN)/python -m uv pip install --quiet --python $(BIN)/python --no-deps -r requirements-embedded.txt
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) $(ARGS)
	$(BIN)/snakemake --report $(REPORT) $(ARGS)

dry-run: $(STAMP)
	$(BIN)/snakemake -n $(ARGS)

report: $(STAMP)
	$(BIN)/snakemake --report $(REPORT) $(ARGS)

# the runs table of each tracked run's experiment (mlflow_runs.json: runs_page, the model-training view; docs/tracking.md)
ui: $(STAMP)
	@for f in results/*/mlflow_runs.json; do [ -f "$$f" ] && $(BIN)/python -c "import json, sys; \
	print('runs table of', sys.argv[1] + ': http://127.0.0.1:5000/' + json.load(open(sys.argv[1]))['runs_page'])" "$$f"; done; \
	echo "any experiment's runs table: http://127.0.0.1:5000/#/experiments/<id>/runs?workflowType=machine_learning"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///results/mlflow.db

test: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

DOCS_PAGES := README.md $(wildcard docs/*.md)
RUN ?= default

docs: $(STAMP)
	$(BIN)/python docs/render.py plots
	$(BIN)/cog -I docs -r $(DOCS_PAGES)

collect: $(STAMP)
	$(BIN)/python docs/collect_run.py results/$(RUN) $(RUN) --note "$(NOTE)"
	$(BIN)/python docs/collect_plans.py
