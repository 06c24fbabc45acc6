"""The SFT stage end to end through the real CLI on the offline tiny model: artifact, W&B, resume, tuning."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import KILLED, fault, logged_losses, run_cli, write_config
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


def test_published_model_loads_back_whole_and_prefers_the_trained_answers(
    smoke_run: tuple[Path, str], tiny_model_dir: Path
) -> None:
    """from_pretrained on the artifact loads every published tensor as written (no key left to random init), and
    the loaded model gives the training set's answers a higher likelihood than the untrained model did."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    artifact = smoke_run[0] / "sft"
    tokenizer = AutoTokenizer.from_pretrained(artifact)
    model, info = AutoModelForCausalLM.from_pretrained(
        artifact, use_safetensors=True, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    written = load_file(artifact / "model.safetensors")
    loaded = model.state_dict()
    for name, tensor in written.items():
        assert torch.equal(loaded[name], tensor), name
    untrained = AutoModelForCausalLM.from_pretrained(tiny_model_dir, use_safetensors=True)
    rows = [
        json.loads(line)
        for line in (smoke_run[0] / ".work" / "sft" / "data" / "train.jsonl").read_text().splitlines()[:8]
    ]

    def answer_log_likelihood(candidate: torch.nn.Module) -> float:
        total = 0.0
        for row in rows:
            prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True)["input_ids"]
            whole = tokenizer.apply_chat_template(row["prompt"] + row["completion"])["input_ids"]
            assert whole[: len(prompt)] == prompt
            ids = torch.tensor([whole])
            with torch.no_grad():
                logits = candidate(input_ids=ids).logits[0, :-1]
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            targets = ids[0, 1:]
            answer = slice(len(prompt) - 1, None)  # positions predicting the answer's tokens
            total += log_probs[answer].gather(-1, targets[answer, None]).sum().item()
        return total / len(rows)

    assert answer_log_likelihood(model) > answer_log_likelihood(untrained) + 1.0


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


def test_kill_during_a_checkpoint_save_resumes_from_the_last_complete_one(
    tmp_path: Path, smoke_run: tuple[Path, str]
) -> None:
    """SIGKILL after checkpoint-8's files are written but before its COMPLETE marker: the resumed run removes it,
    resumes from checkpoint-4 and logs the uninterrupted run's losses."""
    config = write_config(tmp_path)
    killed = run_cli("stage", "sft", "--config", str(config), env=fault("checkpoint-written:8"))
    assert killed.returncode == KILLED, killed.stderr[-3000:]
    work = tmp_path / "run" / ".work" / "sft"
    assert not (tmp_path / "run" / "sft").exists()
    assert (work / "checkpoint-4" / "COMPLETE").is_file()
    assert (work / "checkpoint-8").is_dir() and not (work / "checkpoint-8" / "COMPLETE").exists()
    resumed = run_cli("stage", "sft", "--config", str(config))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"removed what an interrupted run left: {work / 'checkpoint-8'}" in resumed.stderr
    assert f"resuming from {work / 'checkpoint-4'}" in resumed.stderr
    resumed_losses = logged_losses(tmp_path / "run" / "sft")
    reference_losses = logged_losses(smoke_run[0] / "sft")
    assert len(resumed_losses) == len(reference_losses) == 8
    assert resumed_losses == pytest.approx(reference_losses, abs=1e-5)


def test_kill_while_publishing_leaves_no_artifact_and_the_resume_publishes_the_same_model(
    tmp_path: Path, smoke_run: tuple[Path, str]
) -> None:
    """SIGKILL with MANIFEST.json written into the staging folder but before the rename: no artifact, a staging
    folder; the resumed run removes it and publishes weights equal to the uninterrupted run's."""
    config = write_config(tmp_path)
    killed = run_cli("stage", "sft", "--config", str(config), env=fault("publishing"))
    assert killed.returncode == KILLED, killed.stderr[-3000:]
    run_dir = tmp_path / "run"
    assert not (run_dir / "sft").exists()
    staging = run_dir / ".sft.staging"
    assert (staging / "MANIFEST.json").is_file() and (staging / "model.safetensors").is_file()
    resumed = run_cli("stage", "sft", "--config", str(config))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"removed what an interrupted run left: {staging}" in resumed.stderr
    assert not list(run_dir.glob(".sft.*")), list(run_dir.glob(".sft.*"))
    assert logged_losses(run_dir / "sft") == pytest.approx(logged_losses(smoke_run[0] / "sft"), abs=1e-5)
    # the published train_loss is the whole run's, not the mean over the steps the resumed process trained
    metrics = json.loads((run_dir / "sft" / "metrics.json").read_text())
    reference_metrics = json.loads((smoke_run[0] / "sft" / "metrics.json").read_text())
    assert metrics["train_loss"] == pytest.approx(reference_metrics["train_loss"], abs=1e-5)
    published = load_file(run_dir / "sft" / "model.safetensors")
    reference = load_file(smoke_run[0] / "sft" / "model.safetensors")
    assert published.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(published[name], tensor, atol=1e-5, rtol=0, msg=name)


def test_changed_config_refuses_to_resume(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = write_config(tmp_path)
    killed = run_cli("stage", "sft", "--config", str(config), env=fault("checkpoint:4"))
    assert killed.returncode == KILLED
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
