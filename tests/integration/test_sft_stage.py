"""The SFT stage end to end through the real CLI on the offline tiny model: artifact, W&B, resume, tuning."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import logged_losses, run_cli, write_config
from tests.wandb_offline import find_run_files, summarise

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("smoke")
    config = write_config(tmp)
    result = run_cli("stage", "sft", "--config", str(config))
    assert result.returncode == 0, result.stderr[-4000:]
    return tmp / "run", result.stdout


def test_smoke_publishes_a_complete_artifact(smoke_run: tuple[Path, str], tiny_model_dir: Path) -> None:
    run_dir, stdout = smoke_run
    artifact = run_dir / "sft"
    assert f"[sft] artifact: {artifact}" in stdout
    manifest = json.loads((artifact / "MANIFEST.json").read_text())
    assert manifest["stage"] == "sft"
    assert len(manifest["config_hash"]) == 16
    assert set(manifest["data"]) == {"train", "train_eval"}
    assert manifest["metrics"]["global_step"] == 8
    assert manifest["model_kind"] == "full"
    for name in ("model.safetensors", "tokenizer_config.json", "resolved_config.yaml", "metrics.json"):
        assert (artifact / name).is_file(), name
    assert not (artifact / "training_args.bin").exists(), "pickled files must not be published"
    # every parameter trained (the TRL test idiom), and the loss went down on this tiny task set
    before = load_file(tiny_model_dir / "model.safetensors")
    after = load_file(artifact / "model.safetensors")
    unchanged = [name for name, tensor in before.items() if torch.equal(tensor, after[name])]
    assert not unchanged, f"parameters that did not train: {unchanged}"
    losses = logged_losses(artifact)
    assert len(losses) == 8
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2


def test_published_model_loads_back_and_generates(smoke_run: tuple[Path, str]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    artifact = smoke_run[0] / "sft"
    tokenizer = AutoTokenizer.from_pretrained(artifact)
    model = AutoModelForCausalLM.from_pretrained(artifact, use_safetensors=True)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Say hi"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == prompt["input_ids"].shape[1] + 4 or tokenizer.eos_token_id in out[0].tolist()


def test_wandb_offline_run_has_metrics_group_and_artifacts(smoke_run: tuple[Path, str]) -> None:
    run_dir = smoke_run[0]
    files = find_run_files(run_dir)
    assert len(files) == 1, files
    summary = summarise(files[0])
    manifest = json.loads((run_dir / "sft" / "MANIFEST.json").read_text())
    assert summary["run"]["job_type"] == "sft"
    assert summary["run"]["group"] == manifest["wandb_group"]
    assert summary["run"]["id"] == manifest["wandb_run_id"]
    assert len(summary["history"]["train/loss"]) == 8
    kinds = {(name.split("-")[-1], kind) for name, kind, _ in summary["artifacts"]}
    assert ("train", "dataset") in kinds
    assert ("sft", "model") in kinds
    model_meta = next(json.loads(meta) for name, kind, meta in summary["artifacts"] if kind == "model")
    assert any(
        item.startswith("dataset:") and manifest["data"]["train"] in item for item in model_meta["inputs"]
    )


def test_rerun_with_same_config_reuses_the_artifact(smoke_run: tuple[Path, str]) -> None:
    run_dir = smoke_run[0]
    before = (run_dir / "sft" / "MANIFEST.json").read_text()
    result = run_cli("stage", "sft", "--config", str(run_dir.parent / "pipeline.yaml"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "complete artifact with the same config exists" in result.stdout
    assert (run_dir / "sft" / "MANIFEST.json").read_text() == before


def test_force_trains_a_finished_stage_again_from_the_start(
    tmp_path: Path, smoke_run: tuple[Path, str]
) -> None:
    """--force on a finished stage discards that run's checkpoints instead of resuming from its last one."""
    shutil.copytree(smoke_run[0], tmp_path / "run", symlinks=True)
    assert list((tmp_path / "run" / ".work" / "sft").glob("checkpoint-*"))  # the finished run's
    config = write_config(tmp_path)
    forced = run_cli("stage", "sft", "--config", str(config), "--force")
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert "discarding the finished run's checkpoints" in forced.stderr
    assert "resuming from" not in forced.stderr
    losses = logged_losses(tmp_path / "run" / "sft")
    assert len(losses) == 8
    assert losses == pytest.approx(logged_losses(smoke_run[0] / "sft"), abs=1e-5)


def test_exact_resume_after_kill_matches_uninterrupted(tmp_path: Path, smoke_run: tuple[Path, str]) -> None:
    config = write_config(tmp_path)
    killed = run_cli("stage", "sft", "--config", str(config), env={"ALIGNMENT_FAULT_AFTER_CHECKPOINT": "4"})
    assert killed.returncode == 137, killed.stderr[-3000:]
    assert not (tmp_path / "run" / "sft").exists()
    assert (tmp_path / "run" / ".work" / "sft" / "checkpoint-4" / "COMPLETE").is_file()
    resumed = run_cli("stage", "sft", "--config", str(config))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    resumed_losses = logged_losses(tmp_path / "run" / "sft")
    reference_losses = logged_losses(smoke_run[0] / "sft")
    assert len(resumed_losses) == len(reference_losses) == 8
    assert resumed_losses == pytest.approx(reference_losses, abs=1e-5)


def test_changed_config_refuses_to_resume(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = write_config(tmp_path)
    killed = run_cli("stage", "sft", "--config", str(config), env={"ALIGNMENT_FAULT_AFTER_CHECKPOINT": "4"})
    assert killed.returncode == 137
    changed = run_cli("stage", "sft", "--config", str(config), "sft.learning_rate=0.01")
    assert changed.returncode == 2
    assert "different configuration" in changed.stderr and "--restart" in changed.stderr
    restarted = run_cli("stage", "sft", "--config", str(config), "sft.learning_rate=0.01", "--restart")
    assert restarted.returncode == 0, restarted.stderr[-3000:]


def test_lora_publishes_adapter_and_merged(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = write_config(tmp_path, model__tuning={"method": "lora", "lora_r": 4, "lora_alpha": 8})
    result = run_cli("stage", "sft", "--config", str(config), "sft.max_steps=2")
    assert result.returncode == 0, result.stderr[-3000:]
    artifact = tmp_path / "run" / "sft"
    assert json.loads((artifact / "MANIFEST.json").read_text())["model_kind"] == "adapter"
    assert (artifact / "adapter_model.safetensors").is_file()
    assert not (artifact / "model.safetensors").exists()

    merged = run_cli(
        "stage",
        "sft",
        "--config",
        str(config),
        "sft.max_steps=2",
        "model.tuning.merge_on_publish=true",
        "output_dir=" + str(tmp_path / "merged"),
    )
    assert merged.returncode == 0, merged.stderr[-3000:]
    merged_dir = tmp_path / "merged" / "sft"
    assert json.loads((merged_dir / "MANIFEST.json").read_text())["model_kind"] == "merged"
    weights = load_file(merged_dir / "model.safetensors")
    assert not any("lora" in name for name in weights)


def test_bad_config_fails_with_the_key(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = run_cli("stage", "sft", "--config", str(config), "sft.learnin_rate=0.1")
    assert result.returncode == 2
    assert "unknown key 'sft.learnin_rate' (did you mean 'learning_rate'?)" in result.stderr
