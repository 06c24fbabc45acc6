"""`python -m bench scaling`: the line fit, which runs the sweep makes and how each is launched, and the tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench import scaling


def test_linear_fit_recovers_a_line_and_scores_scatter() -> None:
    exact = scaling.linear_fit([4, 8, 16], [13.0, 21.0, 37.0])  # 5 + 2 x
    assert exact["intercept"] == pytest.approx(5.0) and exact["slope"] == pytest.approx(2.0)
    assert exact["r2"] == pytest.approx(1.0)
    xs, ys = [4, 8, 16], [12.5, 22.0, 36.5]
    scattered = scaling.linear_fit(xs, ys)
    slope, intercept = np.polyfit(xs, ys, 1)  # an independent fit; for a line, R^2 is the squared correlation
    assert scattered["slope"] == pytest.approx(slope) and scattered["intercept"] == pytest.approx(intercept)
    assert scattered["r2"] == pytest.approx(np.corrcoef(xs, ys)[0, 1] ** 2)
    assert scattered["r2"] < 1.0
    with pytest.raises(ValueError, match="two distinct"):
        scaling.linear_fit([4, 4], [1.0, 2.0])


def test_the_sweep_runs_each_point_with_its_overrides_and_launcher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[dict[str, Any]] = []

    def fake_measure(model: str, stage: str, options: Any, size: Any, peak: float) -> dict[str, Any]:
        calls.append({"out": options.out, "steps": options.steps, "overrides": options.overrides,
                      "accelerate_config": options.accelerate_config, "num_processes": options.num_processes})  # fmt: skip
        samples = 8 * options.steps * options.num_processes
        seconds = 3.0 + 2.0 * options.steps
        return {"model": model, "stage": stage, "train_runtime_s": seconds, "samples": samples,
                "samples_per_s": samples / seconds, "num_tokens": 100 * samples, "tokens_per_s": 100 * samples / seconds,
                "mfu": 0.25}  # fmt: skip

    monkeypatch.setattr(scaling, "measure_stage", fake_measure)
    monkeypatch.setattr(scaling, "measure_peaks", lambda: {"peak_fp32_flops": 1e11, "mfu_against": "fp32"})
    monkeypatch.setattr(scaling, "model_size", lambda name: scaling.dataclasses.make_dataclass("S", [])())
    scaling.main(["--model", "tiny", "--steps", "2,4", "--lengths", "64", "--processes", "1,2",
                  "--out", str(tmp_path), "sft.learning_rate=0.001"])  # fmt: skip

    assert [Path(c["out"]).name for c in calls] == [
        "samples-2", "samples-4", "length-64", "processes-1", "processes-2"
    ]  # fmt: skip
    assert all(c["overrides"][0] == "sft.learning_rate=0.001" for c in calls)
    length = calls[2]
    assert length["steps"] == 4 and "sft.packing_strategy=wrapped" in length["overrides"]
    assert "sft.max_length=64" in length["overrides"]
    assert calls[3]["accelerate_config"] is None and calls[3]["num_processes"] == 1
    assert (
        calls[4]["accelerate_config"] == "configs/accelerate/cpu_ddp.yaml" and calls[4]["num_processes"] == 2
    )
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["samples_fit"]["intercept"] == pytest.approx(3.0)
    assert result["samples_fit"]["slope"] == pytest.approx(2.0)
    printed = capsys.readouterr().out
    assert "train loop s = 3.0 + 2.00 x steps (R^2 1.0000)" in printed
    assert "| 2 | 64 | 11.0 | 5.82 | 582 | 2.00 |" in printed  # 2 processes: twice the samples, same time


def test_a_stage_other_than_sft_has_no_length_sweep_and_empty_sweeps_are_skipped() -> None:
    cli = scaling.argparse.Namespace(stage="dpo", steps=[2, 4], lengths=[128], length_steps=2, processes=[],
                                     ddp_config="x.yaml")  # fmt: skip
    assert [p["dimension"] for p in scaling.points(cli)] == ["samples", "samples"]
    assert scaling._ints("") == []
    with pytest.raises(scaling.argparse.ArgumentTypeError):
        scaling._ints("4,0")
