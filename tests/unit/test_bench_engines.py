"""bench engines: the per-step arithmetic, the early-stop guard and the table's ratios against HF fp32."""

from __future__ import annotations

import pytest
import torch

from alignment.generation import Generated
from bench import engines


class FakeEngine:
    backend = "fake"

    def __init__(self, width: int | None = None) -> None:
        self.width = width

    def generate(self, input_ids, attention_mask, sampling, keep_logprobs=False):  # noqa: ANN001, ANN201
        width = self.width or sampling.max_new_tokens
        assert sampling.min_new_tokens == sampling.max_new_tokens  # every step does the same work
        return Generated(torch.zeros(input_ids.shape[0], width, dtype=torch.long), None)


def test_a_call_that_stops_early_is_refused() -> None:
    query = {"input_ids": torch.zeros(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3)}
    assert engines.timed(FakeEngine(), query, 8) >= 0
    with pytest.raises(RuntimeError, match="5 tokens instead of 8"):
        engines.timed(FakeEngine(width=5), query, 8)


def test_the_table_gives_each_arm_against_hf_fp32_at_the_same_batch() -> None:
    result = {
        "cpu": "test cpu",
        "threads": 2,
        "model": "m",
        "new_tokens": 48,
        "peak_fp32_flops": 200e9,
        "peak_bf16_flops": 800e9,
        "arms": {
            "hf:float32 b16": {"step_s": 0.150, "warm_up_s": 1.0},
            "vllm:bfloat16 b16": {"step_s": 0.050, "warm_up_s": 20.0},
            "hf:float32 b64": {"step_s": 0.400, "warm_up_s": 1.0},
            "vllm:bfloat16 b64": {"step_s": 0.100, "warm_up_s": 2.0},
        },
    }
    rows = engines.table(result).splitlines()
    assert rows[0].startswith("test cpu, 2 threads; matmul peaks fp32 200, bf16 800 GFLOP/s")
    assert "| vllm:bfloat16 | 16 | 50.0 | 3.00 | 20.0 |" in rows
    assert "| vllm:bfloat16 | 64 | 100.0 | 4.00 | 2.0 |" in rows
    assert "| hf:float32 | 64 | 400.0 | 1.00 | 1.0 |" in rows
