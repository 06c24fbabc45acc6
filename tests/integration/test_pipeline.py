"""`alignment run` and the DPO stage on the tiny model: end to end, skipping, resume, ZeRO-3, failures, DPO loss."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from tests.helpers import (
    KILLED,
    REPO,
    accelerate_launch,
    fault,
    logged_losses,
    run_cli,
    run_cli_in_process,
    write_config,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smoke_pipeline(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[Path, Path, str]:
    tmp = tmp_path_factory.mktemp("pipeline")
    config = write_config(
        tmp,
        evaluation={
            "data": {"source": "builtin:tasks", "split": "test", "task_count": 18},
            "policies": ["sft", "dpo"],
            "max_new_tokens": 8,
        },
    )
    result = run_cli("run", str(config))
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    return tmp, config, result.stdout


def test_smoke_pipeline_runs_every_stage_and_records_the_run(smoke_pipeline: tuple[Path, Path, str]) -> None:
    tmp, _, stdout = smoke_pipeline
    run_dir = tmp / "run"
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "complete"
    assert [s["stage"] for s in record["stages"]] == ["sft", "reward", "dpo"]
    assert all(s["status"] == "done" and s["artifact"] for s in record["stages"])
    group = record["wandb_group"]
    for stage in ("sft", "reward", "dpo"):
        manifest = json.loads((run_dir / stage / "MANIFEST.json").read_text())
        assert manifest["wandb_group"] == group  # one W&B group for the whole run
        assert (run_dir / "logs" / f"{stage}.log").is_file()
    dpo_manifest = json.loads((run_dir / "dpo" / "MANIFEST.json").read_text())
    assert dpo_manifest["inputs"]["sft"]["path"] == str((run_dir / "sft").resolve())
    gold = json.loads((run_dir / "gold_eval.json").read_text())
    assert set(gold) >= {"sft", "dpo"} and all(0.0 <= gold[k] <= 1.0 for k in ("sft", "dpo"))
    assert gold["details"]["sft"]["n"] == 18
    assert "RM held-out accuracy" in stdout and "DPO held-out reward accuracy" in stdout
    assert "gold task score: dpo (held-out tasks)" in stdout


def test_second_run_skips_everything(smoke_pipeline: tuple[Path, Path, str]) -> None:
    tmp, config, _ = smoke_pipeline
    before = {s: (tmp / "run" / s / "MANIFEST.json").read_text() for s in ("sft", "reward", "dpo")}
    again = run_cli("run", str(config))
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("skipped (complete with the same config and inputs)") == 3
    assert before == {s: (tmp / "run" / s / "MANIFEST.json").read_text() for s in ("sft", "reward", "dpo")}


def test_dry_run_and_from_and_changed_config(smoke_pipeline: tuple[Path, Path, str]) -> None:
    _, config, _ = smoke_pipeline
    dry = run_cli("run", str(config), "--dry-run")
    assert dry.returncode == 0 and dry.stdout.count(": skip (") == 3
    from_reward = run_cli("run", str(config), "--dry-run", "--from", "reward")
    assert "# sft: skip" in from_reward.stdout and "# reward: run (--from reward)" in from_reward.stdout
    assert "# dpo: run (--from reward)" in from_reward.stdout
    assert "alignment.stages.reward" in from_reward.stdout and "--force" in from_reward.stdout
    changed = run_cli("run", str(config), "--dry-run", "dpo.beta=0.5")
    assert "# dpo: run (config changed" in changed.stdout and "# reward: skip" in changed.stdout
    upstream = run_cli("run", str(config), "--dry-run", "sft.learning_rate=0.002")
    assert "# reward: run (an upstream stage runs again)" in upstream.stdout


def test_every_shipped_pipeline_dry_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for path in sorted((REPO / "configs" / "pipelines").glob("*.yaml")):
        code, out, err = run_cli_in_process(
            capsys, "run", str(path), f"output_dir={tmp_path / path.stem}", "--dry-run"
        )
        assert code == 0, (path, err[-2000:])
        stages = yaml.safe_load(path.read_text()).get("stages", ["sft"])
        for stage in stages:
            assert f"# {stage}: run (no artifact yet)" in out, path
            assert f"alignment.stages.{stage}" in out, path


def test_failed_stage_stops_with_log_and_rerun_command(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = write_config(tmp_path, reward__data={"source": str(tmp_path / "missing.jsonl")})
    result = run_cli("run", str(config))
    assert result.returncode != 0
    assert "reward failed" in result.stdout
    assert "missing.jsonl" in result.stdout  # the stage's own error, from its log tail
    assert f"log: {tmp_path / 'run' / 'logs' / 'reward.log'}" in result.stdout
    assert "re-run this stage alone:" in result.stdout and "alignment.stages.reward" in result.stdout
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert [s["status"] for s in record["stages"]] == ["done", "failed"]


def test_dpo_exact_resume_after_a_kill_during_a_checkpoint_save(
    tmp_path: Path, smoke_pipeline: tuple[Path, Path, str]
) -> None:
    base, _, _ = smoke_pipeline
    config = write_config(tmp_path, dpo__init_from=str(base / "run" / "sft"))
    killed = run_cli("stage", "dpo", "--config", str(config), env=fault("checkpoint-written:8"))
    assert killed.returncode == KILLED, killed.stderr[-3000:]
    work = tmp_path / "run" / ".work" / "dpo"
    assert not (work / "checkpoint-8" / "COMPLETE").exists()
    resumed = run_cli("stage", "dpo", "--config", str(config))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {work / 'checkpoint-4'}" in resumed.stderr
    assert logged_losses(tmp_path / "run" / "dpo") == pytest.approx(
        logged_losses(base / "run" / "dpo"), abs=1e-5
    )


def test_dpo_changed_must_match_field_refuses_to_resume(
    tmp_path: Path, smoke_pipeline: tuple[Path, Path, str]
) -> None:
    base, _, _ = smoke_pipeline
    config = write_config(tmp_path, dpo__init_from=str(base / "run" / "sft"))
    killed = run_cli("stage", "dpo", "--config", str(config), env=fault("checkpoint:4"))
    assert killed.returncode == KILLED
    changed = run_cli("stage", "dpo", "--config", str(config), "dpo.beta=0.3")
    assert changed.returncode == 2
    assert "holds checkpoints of this stage with a different configuration" in changed.stderr


def test_dpo_under_zero3_two_processes(tmp_path: Path, smoke_pipeline: tuple[Path, Path, str]) -> None:
    base, _, _ = smoke_pipeline
    config = write_config(tmp_path, dpo__init_from=str(base / "run" / "sft"))
    result = accelerate_launch(
        "zero3.yaml",
        "alignment.stages.dpo",
        "--config",
        str(config),
        "dpo.max_steps=2",
        extra=("--num_processes", "2", "--mixed_precision", "no"),
    )
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-5000:])
    manifest = json.loads((tmp_path / "run" / "dpo" / "MANIFEST.json").read_text())
    assert manifest["world_size"] == 2 and manifest["metrics"]["global_step"] == 2


def test_dpo_first_step_loss_equals_hand_computation(smoke_pipeline: tuple[Path, Path, str]) -> None:
    """At step 0 policy == reference, so every implicit reward is 0 and the sigmoid loss is -log sigmoid(0)."""
    base, _, _ = smoke_pipeline
    first = json.loads((base / "run" / "dpo" / "log_history.json").read_text())[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("stage", ["dpo", "ppo"])
def test_reference_from_anchors_the_kl_to_another_artifact(
    tmp_path: Path, smoke_pipeline: tuple[Path, Path, str], stage: str
) -> None:
    """Training on from the DPO policy: with the default reference (the init model itself) the first step's
    policy/reference log-ratio is zero; with `reference_from` the SFT policy, it is not. For PPO "zero" is up to
    float32 rounding: the policy's log-probs are kept while sampling (incremental decoding with a KV cache) and
    the reference's come from one forward pass over the whole sequence, which round differently (~1e-6)."""
    base, _, _ = smoke_pipeline
    first_step = {}
    for name, reference in (("itself", None), ("sft", str(base / "run" / "sft"))):
        (tmp_path / name).mkdir()
        config = write_config(tmp_path / name)
        overrides = [
            f"{stage}.init_from={base / 'run' / 'dpo'}",
            f"{stage}.max_steps=1",
            f"{stage}.save_steps=1000",
        ]
        if reference is not None:
            overrides.append(f"{stage}.reference_from={reference}")
        result = run_cli("stage", stage, "--config", str(config), *overrides)
        assert result.returncode == 0, result.stderr[-3000:]
        artifact = tmp_path / name / "run" / stage
        history = json.loads((artifact / "log_history.json").read_text())
        key = "rewards/chosen" if stage == "dpo" else "objective/kl"
        first_step[name] = next(entry[key] for entry in history if key in entry)
        inputs = json.loads((artifact / "MANIFEST.json").read_text())["inputs"]
        assert ("reference" in inputs) == (reference is not None)
    assert first_step["itself"] == pytest.approx(0.0, abs=1e-6 if stage == "dpo" else 1e-4)
    assert abs(first_step["sft"]) > 1e-2
