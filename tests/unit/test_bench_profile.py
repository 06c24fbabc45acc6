"""`python -m bench profile`: operators sorted into classes by hand-made events, and whole runs on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import profile

REPO = Path(__file__).resolve().parents[2]
SMOKE = str(REPO / "configs" / "pipelines" / "smoke.yaml")


def test_operators_fall_into_their_class_and_the_rest_is_elementwise() -> None:
    assert profile.operator_class("aten::mm") == "matmul"
    assert profile.operator_class("aten::addmm") == "matmul"
    assert profile.operator_class("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert profile.operator_class("aten::_log_softmax") == "softmax / log-probs over the vocabulary"
    assert profile.operator_class("aten::_foreach_addcdiv_") == "optimizer"
    assert profile.operator_class("aten::copy_") == "copies and layout"
    assert profile.operator_class("aten::silu") == profile.OTHER


def test_classes_add_self_time_and_give_the_matmul_flop_rate() -> None:
    events = [
        {"name": "aten::mm", "self_s": 3.0, "flops": 6e9},
        {"name": "aten::addmm", "self_s": 1.0, "flops": 2e9},
        {"name": "aten::mul", "self_s": 0.5, "flops": 0.0},
        {"name": "aten::silu", "self_s": 1.5, "flops": 0.0},
    ]
    summary = profile.summarise(events, steps=2)
    assert summary["profiled_self_s"] == pytest.approx(6.0)
    matmul, other = summary["classes"]["matmul"], summary["classes"][profile.OTHER]
    assert matmul == {
        "s_per_step": pytest.approx(2.0),
        "share": pytest.approx(4 / 6),
        "flop_rate": pytest.approx(2e9),
    }
    assert other["s_per_step"] == pytest.approx(1.0) and other["flop_rate"] is None
    assert list(summary["classes"]) == ["matmul", profile.OTHER]  # by time, largest first


@pytest.mark.parametrize("stage", ["sft", "dpo", "ppo"])
def test_a_run_profiles_the_steps_after_the_wait_and_stops(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], stage: str
) -> None:
    out = tmp_path / "profile"
    options = ["--wait", "1", "--active", "2", "--trace", "--shapes", "--out", str(out)]
    profile.main(["--stage", stage, "--config", SMOKE, *options])
    result = json.loads((out / "result.json").read_text())
    assert result["stage"] == stage and result["steps"] == 2
    assert result["tokens"] > 0 and 0 < result["mfu"] < 1
    if stage != "ppo":  # TRL's callback hooks split the step
        assert (
            result["forward_backward_s_per_step"] + result["optimizer_s_per_step"]
            <= result["wall_s_per_step"]
        )
    assert sum(entry["share"] for entry in result["classes"].values()) == pytest.approx(1.0)
    assert result["classes"]["matmul"]["flop_rate"] > 0  # the profiler counted the matmuls' FLOPs
    assert all(event["shapes"].startswith("[[") for event in result["events"] if event["name"] == "aten::mm")
    assert (out / "trace.json").stat().st_size > 0
    # training stopped after the profiled steps: 1 + 2 of the section's 8, no artifact published
    assert not (out / stage).exists()
    if stage != "sft":
        assert (out / "sft" / "MANIFEST.json").is_file()  # the SFT step made first
    assert "| matmul |" in capsys.readouterr().out
