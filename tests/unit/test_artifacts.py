"""Artifacts: atomic publish, incomplete directories never consumed, latest complete checkpoint, lineage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignment import artifacts
from alignment.artifacts import ArtifactError


def _publish(tmp_path: Path, name: str, inputs: dict | None = None, payload: str = "w") -> Path:
    staging = tmp_path / f".{name}.staging"
    staging.mkdir()
    (staging / "model.safetensors").write_text(payload)
    return artifacts.publish(
        staging, tmp_path / name, {"stage": name, "config_hash": "h-" + name, "inputs": inputs or {}}
    )


def test_publish_writes_manifest_last_and_renames(tmp_path: Path) -> None:
    final = _publish(tmp_path, "sft")
    assert artifacts.is_complete(final)
    manifest = artifacts.read_manifest(final)
    assert manifest["stage"] == "sft" and manifest["manifest_version"] == artifacts.MANIFEST_VERSION
    assert (final / "model.safetensors").read_text() == "w"
    assert not [p for p in tmp_path.iterdir() if "staging" in p.name]


def test_republish_replaces_the_old_artifact_whole(tmp_path: Path) -> None:
    _publish(tmp_path, "sft", payload="old")
    final = _publish(tmp_path, "sft", payload="new")
    assert (final / "model.safetensors").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sft"]


def test_directory_without_manifest_is_incomplete(tmp_path: Path) -> None:
    half = tmp_path / "half"
    half.mkdir()
    (half / "model.safetensors").write_text("w")
    assert not artifacts.is_complete(half)
    with pytest.raises(ArtifactError, match="not a complete artifact"):
        artifacts.read_manifest(half)
    (half / artifacts.MANIFEST).write_text("{trunc")  # a torn write is not complete either
    assert not artifacts.is_complete(half)


def test_latest_complete_checkpoint_skips_unmarked(tmp_path: Path) -> None:
    for step in (2, 4, 6, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
    for step in (2, 6):
        artifacts.mark_checkpoint_complete(tmp_path / f"checkpoint-{step}")
    (tmp_path / "checkpoint-junk").mkdir()
    assert artifacts.latest_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-6"
    assert artifacts.latest_complete_checkpoint(tmp_path / "missing") is None


def test_an_input_record_names_the_upstream_manifest_by_its_hash(tmp_path: Path) -> None:
    sft = _publish(tmp_path, "sft")
    dpo = _publish(tmp_path, "dpo", {"policy": artifacts.input_record(sft)})
    record = json.loads((dpo / artifacts.MANIFEST).read_text())["inputs"]["policy"]
    assert record["manifest_hash"] == artifacts.manifest_hash(sft)


def test_clean_interrupted_removes_unmarked_checkpoints_and_staging_but_keeps_the_rest(
    tmp_path: Path,
) -> None:
    work = tmp_path / ".work" / "sft"
    for step, marked in ((4, True), (8, False)):
        (work / f"checkpoint-{step}").mkdir(parents=True)
        (work / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"x")
        if marked:
            artifacts.mark_checkpoint_complete(work / f"checkpoint-{step}")
    (work / "data").mkdir()
    staging = tmp_path / ".sft.staging"
    retired = tmp_path / ".sft.retired-1700000000000"
    other = tmp_path / ".dpo.staging"
    for folder in (staging, retired, other):
        folder.mkdir()
    removed = artifacts.clean_interrupted(work, tmp_path / "sft")
    assert sorted(removed) == sorted([work / "checkpoint-8", staging, retired])
    assert (work / "checkpoint-4" / "COMPLETE").is_file() and (work / "data").is_dir()
    assert other.is_dir()  # another stage's staging folder is that stage's business
    assert artifacts.clean_interrupted(work, tmp_path / "sft") == []


def test_marker_and_manifest_are_written_after_fsyncing_what_they_vouch_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every file of a checkpoint (and of a staged artifact) is fsynced before its marker (manifest) is written,
    and the folder after it."""
    synced: list[str] = []
    real_fsync = artifacts.fsync_path

    def record(path: str | Path) -> None:
        synced.append(Path(path).name)
        real_fsync(path)

    monkeypatch.setattr(artifacts, "fsync_path", record)
    checkpoint = tmp_path / "checkpoint-2"
    (checkpoint / "sub").mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"w")
    (checkpoint / "sub" / "optimizer.pt").write_bytes(b"o")
    artifacts.mark_checkpoint_complete(checkpoint)
    assert {"model.safetensors", "optimizer.pt", "sub"} <= set(synced[: synced.index("checkpoint-2")])
    assert synced[-1] == "checkpoint-2"  # the folder again, now with COMPLETE in it
    synced.clear()
    staging = tmp_path / ".model.staging"
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"w")
    artifacts.publish(staging, tmp_path / "model", {"stage": "sft"})
    assert synced.index("model.safetensors") < synced.index(".model.staging")
    assert synced[-1] == tmp_path.name  # the parent, after the rename


def test_fault_point_kills_at_the_named_point_and_step_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal

    kills: list[int] = []
    monkeypatch.setattr(artifacts.os, "kill", lambda pid, sig: kills.append(sig))
    monkeypatch.setenv(artifacts.FAULT_ENV, "checkpoint-written:8")
    artifacts.fault_point("checkpoint-written", 4)
    artifacts.fault_point("checkpoint", 8)
    artifacts.fault_point("publishing")
    assert kills == []
    artifacts.fault_point("checkpoint-written", 8)
    assert kills == [signal.SIGKILL]
    monkeypatch.setenv(artifacts.FAULT_ENV, "publishing")
    artifacts.fault_point("publishing")
    assert kills == [signal.SIGKILL, signal.SIGKILL]
    monkeypatch.setenv(artifacts.FAULT_ENV, "chekpoint:4")
    with pytest.raises(ValueError, match="unknown point 'chekpoint'"):
        artifacts.fault_point("data")


def test_whole_run_train_loss_weighs_each_logged_mean_by_its_steps() -> None:
    from alignment.stages.common import whole_run_train_loss

    history = [
        {"loss": 4.0, "step": 2},  # the mean over steps 1-2
        {"eval_loss": 9.0, "step": 2},
        {"loss": 1.0, "step": 3},
        {"loss": 2.0, "step": 6},  # the mean over steps 4-6
        {"train_loss": 7.0, "step": 6},
    ]
    assert whole_run_train_loss(history, 6) == pytest.approx((4.0 * 2 + 1.0 + 2.0 * 3) / 6)
    assert whole_run_train_loss(history, 8) is None  # steps 7-8 were never logged
    assert whole_run_train_loss([], 0) is None
