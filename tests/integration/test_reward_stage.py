"""The reward stage end to end on the tiny model: CLI, diagnostics, normalisation, resume, ZeRO-2, rm-check, score."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from reward_models.learned import LearnedRewardModel
from tests.helpers import KILLED, accelerate_launch, fault, logged_losses, run_cli, write_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sft_then_reward(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("reward")
    config = write_config(tmp)
    sft = run_cli("stage", "sft", "--config", str(config), "sft.max_steps=4")
    assert sft.returncode == 0, sft.stderr[-3000:]
    reward = run_cli("stage", "reward", "--config", str(config), "sft.max_steps=4")
    assert reward.returncode == 0, reward.stderr[-4000:]
    return tmp, config


def test_reward_artifact_has_rm_normalisation_and_diagnostics(sft_then_reward: tuple[Path, Path]) -> None:
    tmp, _ = sft_then_reward
    artifact = tmp / "run" / "reward"
    manifest = json.loads((artifact / "MANIFEST.json").read_text())
    assert manifest["stage"] == "reward" and manifest["model_kind"] == "full"
    assert manifest["inputs"]["sft"]["path"] == str((tmp / "run" / "sft").resolve())
    diagnostics = json.loads((artifact / "diagnostics.json").read_text())
    assert diagnostics["n_pairs"] == 16  # eval_fraction 0.25 of 64 tasks
    assert (
        0.0 <= diagnostics["accuracy_ci95"][0] <= diagnostics["accuracy"] <= diagnostics["accuracy_ci95"][1]
    )
    assert len(diagnostics["calibration"]) == 4
    assert "by_source" in diagnostics and diagnostics["by_source"]
    assert "pairwise accuracy" in (artifact / "diagnostics.md").read_text()
    assert manifest["metrics"]["heldout_accuracy"] == diagnostics["accuracy"]
    stats = json.loads((artifact / "normalization.json").read_text())
    assert stats["n"] == 32 and stats["std"] > 0
    # the stats describe the RM's raw scores on the training pairs' chosen responses
    rm = LearnedRewardModel(artifact)
    rows = [json.loads(line) for line in (tmp / "run" / ".work" / "reward" / "data" / "train.jsonl").open()][
        :32
    ]
    raw = rm.raw_score([r["prompt"] for r in rows], [r["chosen"][-1]["content"] for r in rows])
    assert raw.mean().item() == pytest.approx(stats["mean"], abs=1e-4)
    normalised = rm.score([r["prompt"] for r in rows], [r["chosen"][-1]["content"] for r in rows])
    assert normalised.mean().item() == pytest.approx(0.0, abs=1e-3)
    assert normalised.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-3)


def test_policy_samples_normalisation_scores_the_policys_own_seeded_samples(
    sft_then_reward: tuple[Path, Path],
) -> None:
    from reward_models.check import compute_normalization, policy_samples

    tmp, _ = sft_then_reward
    rm = LearnedRewardModel(tmp / "run" / "reward")
    rows = [json.loads(line) for line in (tmp / "run" / ".work" / "reward" / "data" / "train.jsonl").open()]
    policy = tmp / "run" / "sft"
    stats = compute_normalization(rm, rows, "policy_samples", 8, policy_path=policy, seed=3)
    assert stats is not None and stats["n"] == 8 and str(policy) in stats["source"]
    prompts = [row["prompt"] for row in rows[:8]]
    completions = policy_samples(policy, prompts, seed=3)  # the same seed draws the same samples
    assert len(completions) == 8 and completions == policy_samples(policy, prompts, seed=3)
    assert completions != policy_samples(policy, prompts, seed=4)
    raw = rm.raw_score(prompts, completions)
    assert raw.mean().item() == pytest.approx(stats["mean"], abs=1e-5)
    assert raw.std(unbiased=False).item() == pytest.approx(stats["std"], rel=1e-3)


def test_the_rm_head_was_trained(sft_then_reward: tuple[Path, Path]) -> None:
    from safetensors.torch import load_file

    tmp, _ = sft_then_reward
    weights = load_file(tmp / "run" / "reward" / "model.safetensors")
    sft_weights = load_file(tmp / "run" / "sft" / "model.safetensors")
    assert "score.weight" in weights
    changed = [n for n, t in sft_weights.items() if n in weights and not torch.equal(t, weights[n])]
    assert changed, "the RM body did not move from its SFT initialisation"


def test_rm_check_and_score_commands(sft_then_reward: tuple[Path, Path]) -> None:
    tmp, _ = sft_then_reward
    artifact = tmp / "run" / "reward"
    held_out = tmp / "run" / ".work" / "reward" / "data" / "train_eval.jsonl"
    check = run_cli("rm-check", "--rm", str(artifact), "--data", str(held_out))
    assert check.returncode == 0, check.stderr[-3000:]
    stored = json.loads((artifact / "diagnostics.json").read_text())
    assert f"**{stored['accuracy']:.3f}**" in check.stdout

    prompts = tmp / "prompts.jsonl"
    rows = [
        {
            "prompt": [{"role": "user", "content": "What is 2 + 2?"}],
            "completion": [{"role": "assistant", "content": "4"}],
        },
        {
            "prompt": [{"role": "user", "content": "Say hi"}],
            "completion": [{"role": "assistant", "content": "hi"}],
        },
    ]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp / "scores.jsonl"
    scored = run_cli("score", "--rm", str(artifact), "--data", str(prompts), "--out", str(out))
    assert scored.returncode == 0, scored.stderr[-3000:]
    values = [json.loads(line)["score"] for line in out.open()]
    expected = LearnedRewardModel(artifact).score([r["prompt"] for r in rows], ["4", "hi"])
    assert values == pytest.approx(expected.tolist(), abs=1e-5)


def test_reward_without_sft_artifact_is_a_clear_error(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = write_config(tmp_path)
    result = run_cli("stage", "reward", "--config", str(config))
    assert result.returncode == 2
    assert "is not a complete artifact. Run the SFT stage first" in result.stderr


def test_reward_killed_while_staging_its_artifact_resumes_exactly(
    tmp_path: Path, sft_then_reward: tuple[Path, Path]
) -> None:
    """SIGKILL with the model and diagnostics in the staging folder, before MANIFEST.json: no artifact; the resumed
    run (from checkpoint-4: the finished run's last checkpoint is passed over) logs the same losses and publishes
    the same diagnostics and normalisation as the uninterrupted run."""
    base, _ = sft_then_reward
    config = write_config(tmp_path, reward__init_from=str(base / "run" / "sft"))
    killed = run_cli("stage", "reward", "--config", str(config), env=fault("staged"))
    assert killed.returncode == KILLED, killed.stderr[-3000:]
    assert not (tmp_path / "run" / "reward").exists()
    assert (tmp_path / "run" / ".reward.staging" / "diagnostics.json").is_file()
    resumed = run_cli("stage", "reward", "--config", str(config))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {tmp_path / 'run' / '.work' / 'reward' / 'checkpoint-4'}" in resumed.stderr
    reference = logged_losses(base / "run" / "reward")
    assert logged_losses(tmp_path / "run" / "reward") == pytest.approx(reference, abs=1e-5)
    published = json.loads((tmp_path / "run" / "reward" / "diagnostics.json").read_text())
    expected = json.loads((base / "run" / "reward" / "diagnostics.json").read_text())
    for key, value in expected.items():
        if isinstance(value, float):
            assert published[key] == pytest.approx(value, abs=1e-5), key


def test_reward_under_zero2_two_processes(tmp_path: Path, sft_then_reward: tuple[Path, Path]) -> None:
    base, _ = sft_then_reward
    config = write_config(tmp_path, reward__init_from=str(base / "run" / "sft"))
    result = accelerate_launch(
        "zero2.yaml",
        "alignment.stages.reward",
        "--config",
        str(config),
        extra=("--num_processes", "2", "--mixed_precision", "no"),
    )
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-5000:])
    manifest = json.loads((tmp_path / "run" / "reward" / "MANIFEST.json").read_text())
    assert manifest["world_size"] == 2
    assert (tmp_path / "run" / "reward" / "diagnostics.json").is_file()
    scores = LearnedRewardModel(tmp_path / "run" / "reward").score(["hi"], ["there"])
    assert torch.isfinite(scores).all()
