"""alignment.finite: what counts as non-finite, what is written as JSON, and which checkpoints a NaN retires."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from alignment import artifacts
from alignment.finite import (
    NonFiniteError,
    guard_callback,
    json_safe,
    non_finite,
    require_finite,
    retire_checkpoints_after,
)


def test_non_finite_finds_nan_and_infinities_among_numbers_only() -> None:
    values = {"loss": float("nan"), "grad_norm": math.inf, "lr": 1e-4, "flag": True, "name": "x", "n": 3}
    assert set(non_finite(values)) == {"loss", "grad_norm"}
    assert non_finite(values, ["lr", "missing"]) == {}
    assert non_finite({"eval_loss": -math.inf}, ["eval_loss"]) == {"eval_loss": -math.inf}


def test_require_finite_counts_a_missing_or_null_named_value_as_not_finite() -> None:
    require_finite("ok", {"mean": 0.1, "std": 1.0}, ("mean", "std"))
    with pytest.raises(NonFiniteError, match="stats: std = None. Nothing was published"):
        require_finite("stats", {"mean": 0.1, "std": None}, ("mean", "std"))
    with pytest.raises(NonFiniteError, match="mean = nan"):
        require_finite("stats", {"mean": float("nan"), "std": 1.0})


def test_json_is_written_standard_with_undefined_values_as_null(tmp_path: Path) -> None:
    data = {"a": float("nan"), "b": [1.0, math.inf, {"c": -math.inf}], "d": "text", "e": 2}
    assert json_safe(data) == {"a": None, "b": [1.0, None, {"c": None}], "d": "text", "e": 2}
    artifacts.write_json_atomic(tmp_path / "m.json", data)
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["b"] == [1.0, None, {"c": None}]


def _checkpoint(work_dir: Path, step: int, complete: bool = True) -> Path:
    path = work_dir / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if complete:
        artifacts.mark_checkpoint_complete(path)
    return path


def test_checkpoints_after_the_last_finite_step_are_retired(tmp_path: Path) -> None:
    for step in (2, 4, 6):
        _checkpoint(tmp_path, step)
    _checkpoint(tmp_path, 3, complete=False)
    good, retired = retire_checkpoints_after(tmp_path, 4)
    assert good == tmp_path / "checkpoint-4" and retired == [tmp_path / "checkpoint-6"]
    assert (
        artifacts.latest_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    )  # a resume starts there
    assert retire_checkpoints_after(tmp_path / "none", 1) == (None, [])


def test_the_guard_stops_at_the_first_non_finite_log_and_names_step_and_checkpoint(tmp_path: Path) -> None:
    _checkpoint(tmp_path, 2)
    _checkpoint(tmp_path, 4)
    guard = guard_callback("sft", tmp_path, is_main=True)
    for step in (1, 2, 3):
        guard.on_log(None, SimpleNamespace(global_step=step), None, logs={"loss": 1.0, "grad_norm": 2.0})
    with pytest.raises(NonFiniteError) as error:
        guard.on_log(
            None, SimpleNamespace(global_step=4), None, logs={"loss": 0.5, "grad_norm": float("nan")}
        )
    message = str(error.value)
    assert message.startswith("[sft] step 4: grad_norm = nan. Stopped; nothing was published.")
    assert "checkpoint-4" in message and "set aside" in message  # saved after the last finite log (step 3)
    assert f"Last checkpoint with finite values: {tmp_path / 'checkpoint-2'}" in message
    assert "lower the learning rate" in message
    assert artifacts.latest_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
