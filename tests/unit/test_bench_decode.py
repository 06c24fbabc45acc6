"""`python -m bench decode`: the step's bounds from the model's own weights, and a whole run on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import decode


def test_bounds_count_every_linear_weight_and_the_batch(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = model.config
    hidden, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (hidden // config.num_attention_heads)
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inner  # q, o; k, v; gate, up, down
    parameters = layers * per_layer + config.vocab_size * hidden  # and the LM head
    bounds = decode.step_bounds(model, batch=4, bandwidth=1e9, peak=1e10)
    assert bounds["matmul_parameters"] == parameters
    assert bounds["weight_bytes"] == 4 * parameters
    assert bounds["memory_bound_s"] == pytest.approx(4 * parameters / 1e9)
    assert bounds["compute_bound_s"] == pytest.approx(2 * parameters * 4 / 1e10)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_run_on_the_tiny_model_times_each_way_and_profiles_the_step(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], dtype: str
) -> None:
    options = ["--dtype", dtype, "--batch", "2", "--new-tokens", "4", "--top", "100", "--out", str(tmp_path)]
    decode.main(["--model", str(tiny_model_dir), *options])
    result = json.loads((tmp_path / "result.json").read_text())
    bytes_per_weight = 4 if dtype == "float32" else 2
    assert result["dtype"] == dtype
    assert result["weight_bytes"] == bytes_per_weight * result["matmul_parameters"]
    assert set(result["step_s"]) == {
        "dynamic cache",
        "dynamic cache, HF's multinomial sampling",
        "static cache",
    }
    assert all(seconds > 0 for seconds in result["step_s"].values())
    assert result["matmuls_alone_s"] > 0 and result["read_bandwidth_bytes_per_s"] > 1e8
    assert "aten::mm" in result["operators_s_per_step"]  # the step's matmuls
    printed = capsys.readouterr().out
    assert "| `generate`, dynamic cache |" in printed and "| memory bound (" in printed


def test_one_step_cannot_leave_the_prefill_out(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        decode.main(["--new-tokens", "1", "--out", str(tmp_path)])
