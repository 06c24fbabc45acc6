"""bench/faults.py's checks on hand-made folders: where a kill landed, what counts as a whole artifact, what an
interrupted run leaves behind, and which named points each stage is killed at."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from alignment import artifacts
from bench import faults


def _artifact(folder: Path, weight: torch.Tensor) -> Path:
    folder.mkdir(parents=True)
    save_file({"w": weight}, str(folder / "model.safetensors"))
    (folder / "metrics.json").write_text("{}")
    (folder / "log_history.json").write_text(json.dumps([{"loss": 1.0, "step": 1}]))
    artifacts.write_json_atomic(folder / artifacts.MANIFEST, {"stage": "sft"})
    return folder


def test_where_a_kill_landed_is_read_from_what_it_left(tmp_path: Path) -> None:
    run = tmp_path / "run"
    work = run / ".work" / "sft"
    work.mkdir(parents=True)
    assert faults.landed_in(run, "sft") == "startup"
    (work / "data").mkdir()
    (work / "data" / "train.jsonl").write_text("{}\n")
    assert faults.landed_in(run, "sft") == "training"
    (work / "checkpoint-4").mkdir()
    assert faults.landed_in(run, "sft") == "checkpointing"
    artifacts.mark_checkpoint_complete(work / "checkpoint-4")
    assert faults.landed_in(run, "sft") == "training"
    (run / ".sft.staging").mkdir()
    assert faults.landed_in(run, "sft") == "publishing"
    assert faults.leftovers(run, "sft") == [str(run / ".sft.staging")]
    (run / ".sft.staging").rmdir()
    _artifact(run / "sft", torch.ones(2))
    assert faults.landed_in(run, "sft") == "published"
    assert faults.leftovers(run, "sft") == []


def test_whole_refuses_a_missing_manifest_bad_json_and_non_finite_weights(tmp_path: Path) -> None:
    good = _artifact(tmp_path / "good", torch.ones(3))
    assert faults.whole(good) is None
    (good / "log_history.json").write_text('[{"loss": 1.0')
    assert "JSONDecodeError" in (faults.whole(good) or "")
    poisoned = _artifact(tmp_path / "poisoned", torch.tensor([1.0, float("nan")]))
    assert faults.whole(poisoned) == "model.safetensors: w is not finite"
    truncated = _artifact(tmp_path / "truncated", torch.ones(64))
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert faults.whole(truncated) is not None
    (truncated / artifacts.MANIFEST).unlink()
    assert faults.whole(truncated) == "no valid MANIFEST.json"


def test_weight_difference_and_losses(tmp_path: Path) -> None:
    ours = _artifact(tmp_path / "ours", torch.tensor([1.0, 2.0]))
    theirs = _artifact(tmp_path / "theirs", torch.tensor([1.0, 2.5]))
    assert faults.weight_difference(ours, theirs) == pytest.approx(0.5)
    assert faults.losses(ours) == [1.0]


@pytest.mark.parametrize(
    ("stage", "expected_step"), [("sft", 4), ("reward", 4), ("dpo", 4), ("ppo", 2), ("grpo", 2), ("rloo", 2)]
)
def test_named_points_take_the_last_checkpoint_before_the_final_step(
    tmp_path: Path, stage: str, expected_step: int
) -> None:
    config = faults.stage_config(tmp_path, None)
    assert faults.named_points(stage, config) == [
        "data",
        f"checkpoint-written:{expected_step}",
        f"checkpoint:{expected_step}",
        "staged",
        "publishing",
    ]
    assert {point.split(":")[0] for point in faults.named_points(stage, config)} == set(
        artifacts.FAULT_POINTS
    )
