# Everything runs from the project root; DAGSTER_HOME points at the project-local instance (dagster.yaml).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export DAGSTER_HOME := $(CURDIR)

.PHONY: demo test ui mlflow-ui bench install

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: install  ## materialize the whole asset graph on the embedded demo, then print where to look
	$(BIN)/skinr1 demo

test: install  ## the test suite (CI runs this)
	$(BIN)/python -m pytest -q

ui: install  ## Dagster UI on http://127.0.0.1:3000
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

mlflow-ui: install  ## MLflow UI on http://127.0.0.1:5000 over the local tracking store
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/.skinr1/mlflow/mlflow.db --host 127.0.0.1 --port 5000

bench: install  ## ingest benchmark (HAM10000-sized folder)
	$(BIN)/python benchmarks/bench_ingest.py
