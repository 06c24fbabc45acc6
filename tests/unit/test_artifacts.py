"""Artifacts: atomic publish, incomplete directories never consumed, latest complete checkpoint, lineage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignment import artifacts
from alignment.artifacts import ArtifactError


def _publish(tmp_path: Path, name: str, inputs: dict | None = None, payload: str = "w") -> Path:
    staging = artifacts.staging_dir(tmp_path / name)
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


def test_lineage_follows_inputs(tmp_path: Path) -> None:
    sft = _publish(tmp_path, "sft")
    reward = _publish(tmp_path, "reward", {"policy": artifacts.input_record(sft)})
    dpo = _publish(
        tmp_path, "dpo", {"policy": artifacts.input_record(sft), "rm": artifacts.input_record(reward)}
    )
    chain = artifacts.lineage(dpo)
    assert [item["stage"] for item in chain] == ["dpo", "sft", "reward"]
    record = json.loads((dpo / artifacts.MANIFEST).read_text())["inputs"]["policy"]
    assert record["manifest_hash"] == artifacts.manifest_hash(sft)
