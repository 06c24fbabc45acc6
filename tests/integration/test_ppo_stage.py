"""The PPO stage end to end on the tiny model: CLI, metrics, W&B, exact resume, the RM-accuracy refusal,
2-process DeepSpeed ZeRO-2/3 with save and load; GRPO and RLOO over TRL with a rule and with a learned RM."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import KILLED, REPO, accelerate_launch, fault, logged_losses, run_cli, write_config
from tests.wandb_offline import find_run_files, summarise

pytestmark = pytest.mark.integration

PPO_METRICS = {
    "reward/score",
    "objective/kl",
    "objective/kl_coef",
    "objective/rlhf_reward",
    "policy/entropy",
    "policy/approx_kl",
    "policy/clipfrac",
    "value/clipfrac",
    "loss/value",
    "value/explained_variance",
    "response/length",
    "response/eos_rate",
    "time/generation_s",
    "time/scoring_s",
    "time/training_s",
    "throughput/response_tokens_per_s",
}


@pytest.fixture(scope="module")
def sft_and_rm(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """One SFT and one reward artifact shared by every test here (each test has its own output_dir)."""
    tmp = tmp_path_factory.mktemp("ppo_base")
    config = write_config(tmp)
    for stage in ("sft", "reward"):
        result = run_cli("stage", stage, "--config", str(config), "sft.max_steps=4", "reward.max_steps=4")
        assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "run"


def _config(tmp: Path, base: Path, **updates: object) -> Path:
    return write_config(tmp, ppo__init_from=str(base / "sft"), **updates)


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory: pytest.TempPathFactory, sft_and_rm: Path) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("ppo")
    config = _config(tmp, sft_and_rm)
    result = run_cli("stage", "ppo", "--config", str(config))
    assert result.returncode == 0, result.stderr[-4000:]
    return tmp, config


def _load_policy_in_fresh_process(artifact: Path) -> str:
    code = (
        "import sys, torch\n"
        "from alignment.models import load_artifact_for_inference\n"
        "from alignment.evaluate import generate\n"
        "model, tok = load_artifact_for_inference(sys.argv[1])\n"
        "out = generate(model, tok, [[{'role': 'user', 'content': 'Say hi.'}]], max_new_tokens=4)\n"
        "assert isinstance(out[0], str)\n"
        "print('loaded', sum(p.numel() for p in model.parameters()))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(artifact)], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_ppo_publishes_a_loadable_policy_with_its_metrics(ppo_run: tuple[Path, Path]) -> None:
    tmp, _ = ppo_run
    artifact = tmp / "run" / "ppo"
    manifest = json.loads((artifact / "MANIFEST.json").read_text())
    assert manifest["stage"] == "ppo" and manifest["model_kind"] == "full"
    assert manifest["metrics"]["global_step"] == 4
    history = json.loads((artifact / "log_history.json").read_text())
    assert [entry["step"] for entry in history] == [1, 2, 3, 4]
    for entry in history:
        assert set(entry) >= PPO_METRICS, PPO_METRICS - set(entry)
        assert 0.0 <= entry["response/eos_rate"] <= 1.0
        assert 1.0 <= entry["response/length"] <= 16.0
    assert "loaded" in _load_policy_in_fresh_process(artifact)
    # the published weights differ from the SFT policy's: PPO updated them
    from safetensors.torch import load_file

    ppo_weights = load_file(artifact / "model.safetensors")
    sft_weights = load_file(Path(manifest["inputs"]["init"]["path"]) / "model.safetensors")
    changed = [k for k in ppo_weights if not (ppo_weights[k] == sft_weights[k]).all()]
    assert changed


def test_ppo_logs_to_wandb(ppo_run: tuple[Path, Path]) -> None:
    tmp, _ = ppo_run
    files = find_run_files(tmp / "run")
    assert len(files) == 1, files
    summary = summarise(files[0])
    assert summary["run"]["job_type"] == "ppo"
    history = summary["history"]
    assert {"reward/score", "objective/kl", "policy/clipfrac", "time/generation_s"} <= set(history)
    assert len(history["reward/score"]) == 4
    assert "samples/path" in history  # the table of sample completions (a media file)


def test_ppo_resumes_exactly_after_a_kill_during_a_checkpoint_save(
    ppo_run: tuple[Path, Path], tmp_path: Path, sft_and_rm: Path
) -> None:
    """SIGKILL after checkpoint-3's files are written, before its COMPLETE marker: the resume removes it, starts
    from checkpoint-2 and logs what the uninterrupted run logged."""
    reference_tmp, _ = ppo_run
    reference = logged_losses(reference_tmp / "run" / "ppo")
    config = _config(tmp_path, sft_and_rm, ppo__save_steps=1)
    killed = run_cli("stage", "ppo", "--config", str(config), env=fault("checkpoint-written:3"))
    assert killed.returncode == KILLED, killed.stderr[-3000:]
    work = tmp_path / "run" / ".work" / "ppo"
    assert (work / "checkpoint-2" / "COMPLETE").is_file()
    assert (work / "checkpoint-3").is_dir() and not (work / "checkpoint-3" / "COMPLETE").exists()
    resumed = run_cli("stage", "ppo", "--config", str(config))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"removed what an interrupted run left: {work / 'checkpoint-3'}" in resumed.stderr
    assert "resumed at iteration 2" in resumed.stderr
    losses = logged_losses(tmp_path / "run" / "ppo")
    assert len(losses) == len(reference) == 4
    assert losses == pytest.approx(reference, abs=1e-5)
    history = json.loads((tmp_path / "run" / "ppo" / "log_history.json").read_text())
    reference_history = json.loads((reference_tmp / "run" / "ppo" / "log_history.json").read_text())
    for key in ("reward/score", "objective/kl", "objective/kl_coef"):
        assert [h[key] for h in history] == pytest.approx([h[key] for h in reference_history], abs=1e-5)


def test_ppo_written_by_two_processes_resumes_on_one(sft_and_rm: Path, tmp_path: Path) -> None:
    """A requeue onto fewer processes: 2 DDP processes are killed after checkpoint-1 (8 prompts consumed); one
    process resumes it, carrying weights, optimiser and KL controller over and continuing the prompts at 8."""
    config = _config(tmp_path, sft_and_rm)
    settings = ("ppo.max_steps=3", "ppo.save_steps=1", "ppo.rollout_batch_size=4")
    killed = accelerate_launch(
        "cpu_ddp.yaml",
        "alignment.stages.ppo",
        "--config",
        str(config),
        *settings,
        extra=("--num_processes", "2"),
        env=fault("checkpoint:1"),
    )
    assert killed.returncode != 0
    checkpoint = tmp_path / "run" / ".work" / "ppo" / "checkpoint-1"
    state = json.loads((checkpoint / "ppo_state.json").read_text())
    assert state["world_size"] == 2 and state["data_position"] == {"data_pass": 0, "offset": 8}
    resumed = run_cli("stage", "ppo", "--config", str(config), *settings)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"{checkpoint} was written by 2 processes, this run has 1" in resumed.stderr
    assert "the prompts continue at pass 0, prompt 8" in resumed.stderr
    manifest = json.loads((tmp_path / "run" / "ppo" / "MANIFEST.json").read_text())
    assert manifest["world_size"] == 1
    history = json.loads((tmp_path / "run" / "ppo" / "log_history.json").read_text())
    assert [h["step"] for h in history] == [1, 2, 3]
    assert history[0] == state["log_history"][0]  # iteration 1 came from the two-process checkpoint


def test_keeping_the_critic_trunk_changes_no_logged_figure(sft_and_rm: Path, tmp_path: Path) -> None:
    """With the critic's first block frozen, its output is kept from the rollout for the PPO epochs; the run logs
    what a run that passes the whole critic in every epoch logs."""
    histories = []
    for cache in ("true", "false"):
        (tmp_path / cache).mkdir()
        config = _config(tmp_path / cache, sft_and_rm)
        result = run_cli(
            "stage",
            "ppo",
            "--config",
            str(config),
            "ppo.critic_trainable_last_n_blocks=1",
            f"ppo.cache_critic_trunk={cache}",
            "ppo.max_steps=2",
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert ("critic's first 1 blocks are frozen" in result.stderr) == (cache == "true"), result.stderr[
            -2000:
        ]
        assert "differ from the full pass" not in result.stderr
        histories.append(json.loads((tmp_path / cache / "run" / "ppo" / "log_history.json").read_text()))
    cached, full = histories
    assert len(cached) == len(full) == 2
    assert [h["numerics/cached_critic_trunk"] for h in cached] == [1.0, 1.0]
    assert [h["numerics/cached_critic_trunk"] for h in full] == [0.0, 0.0]
    for key in ("loss/value", "loss/policy", "value/explained_variance", "objective/kl"):
        assert [h[key] for h in cached] == pytest.approx([h[key] for h in full], abs=1e-5), key
    # A clip fraction counts tokens past a threshold: float reordering may move one token (of ~250) across it.
    assert [h["value/clipfrac"] for h in cached] == pytest.approx(
        [h["value/clipfrac"] for h in full], abs=1 / 128
    )


@pytest.mark.parametrize("method", ["full", "lora"])
def test_padding_free_passes_change_no_logged_figure(sft_and_rm: Path, tmp_path: Path, method: str) -> None:
    """Packing each micro-batch into one row (the default) logs what padded micro-batches log: full fine-tuning
    with a separate reference model, and LoRA (reference = adapter disabled) with a kept critic trunk."""
    histories = []
    for padding_free in ("true", "false"):
        (tmp_path / padding_free).mkdir()
        config = _config(tmp_path / padding_free, sft_and_rm, model__tuning__method=method)
        result = run_cli(
            "stage",
            "ppo",
            "--config",
            str(config),
            f"ppo.padding_free={padding_free}",
            "ppo.critic_trainable_last_n_blocks=1",
            "ppo.max_steps=2",
        )
        assert result.returncode == 0, result.stderr[-3000:]
        packed = (
            "padding-free passes: each micro-batch's sequences packed into one row, attention per sequence"
        )
        assert (packed in result.stderr) == (padding_free == "true"), result.stderr[-2000:]
        assert "differ from the full pass" not in result.stderr
        histories.append(
            json.loads((tmp_path / padding_free / "run" / "ppo" / "log_history.json").read_text())
        )
    packed_history, padded_history = histories
    assert len(packed_history) == len(padded_history) == 2
    assert abs(packed_history[1]["objective/kl"]) > 1e-4, packed_history[1]  # the policy moved
    keys = ("reward/score", "objective/kl", "loss/policy", "loss/value", "policy/entropy", "policy/approx_kl")
    for key in (*keys, "value/explained_variance", "response/length"):
        assert [h[key] for h in packed_history] == pytest.approx(
            [h[key] for h in padded_history], abs=1e-4
        ), key


def test_lora_ppo_generates_with_the_adapter_folded(sft_and_rm: Path, tmp_path: Path) -> None:
    """With LoRA the reference is the policy without its adapter (first iteration: KL 0, up to the float32 rounding
    between log-probs kept while sampling and the reference's full forward pass, ~1e-6), and generation with the
    adapter folded into the weights gives the run that the adapter layers give."""
    histories = []
    for fold in ("true", "false"):
        (tmp_path / fold).mkdir()
        config = _config(tmp_path / fold, sft_and_rm, model__tuning__method="lora")
        result = run_cli(
            "stage",
            "ppo",
            "--config",
            str(config),
            f"ppo.fold_adapter_for_generation={fold}",
            "ppo.max_steps=2",
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert ("adapter folded into the weights" in result.stderr) == (fold == "true"), result.stderr[-2000:]
        histories.append(json.loads((tmp_path / fold / "run" / "ppo" / "log_history.json").read_text()))
    folded, layered = histories
    assert folded[0]["objective/kl"] == pytest.approx(0.0, abs=1e-4)
    assert abs(folded[1]["objective/kl"]) > 1e-3, folded[1]  # the adapter trained
    for key in ("reward/score", "objective/kl", "loss/policy", "loss/value", "response/length"):
        assert [h[key] for h in folded] == pytest.approx([h[key] for h in layered], abs=1e-4), key


def test_log_probs_kept_while_sampling_give_the_run_a_recomputing_pass_gives(
    sft_and_rm: Path, tmp_path: Path
) -> None:
    """The log-probs kept while sampling agree with a forward pass's (checked once per run and logged); a run
    whose check fails (here a tolerance of 0) warns and recomputes, as a run with the option off does."""
    runs = {
        "recomputed": ("ppo.logprobs_from_generation=false",),
        "kept": (),
        "fallback": ("ppo.generation_logprob_tolerance=0",),
    }
    histories, logs = {}, {}
    for name, overrides in runs.items():
        (tmp_path / name).mkdir()
        config = _config(tmp_path / name, sft_and_rm)
        result = run_cli("stage", "ppo", "--config", str(config), "ppo.max_steps=2", *overrides)
        assert result.returncode == 0, result.stderr[-3000:]
        logs[name] = result.stderr
        histories[name] = json.loads((tmp_path / name / "run" / "ppo" / "log_history.json").read_text())
    assert "kept while sampling vs a full forward pass" not in logs["recomputed"]
    match = re.search(
        r"kept while sampling vs a full forward pass: mean \|diff\| (\S+), max (\S+)", logs["kept"]
    )
    assert match, logs["kept"][-2000:]
    assert float(match.group(2)) < 1e-4
    assert "recomputing them with a forward pass from now on" not in logs["kept"]
    assert "recomputing them with a forward pass from now on" in logs["fallback"], logs["fallback"][-2000:]
    # Each iteration logs the path it took, and the check's measured difference once it was made.
    paths = {
        name: [h["numerics/kept_generation_logprobs"] for h in history] for name, history in histories.items()
    }
    assert paths == {"recomputed": [0.0, 0.0], "kept": [1.0, 1.0], "fallback": [0.0, 0.0]}
    assert "numerics/generation_logprob_mean_diff" not in histories["recomputed"][0]
    assert histories["kept"][0]["numerics/generation_logprob_mean_diff"] == pytest.approx(
        float(match.group(1)), rel=1e-2
    )  # the log prints 3 significant digits
    assert histories["fallback"][0]["numerics/generation_logprob_mean_diff"] > 0
    for key in ("reward/score", "objective/kl", "loss/policy", "loss/value", "policy/approx_kl"):
        recomputed = [h[key] for h in histories["recomputed"]]
        assert [h[key] for h in histories["fallback"]] == pytest.approx(recomputed, abs=1e-6), key
        assert [h[key] for h in histories["kept"]] == pytest.approx(recomputed, abs=1e-4), key


def test_ppo_refuses_a_reward_model_below_the_threshold(sft_and_rm: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, sft_and_rm, ppo__reward_model=str(sft_and_rm / "reward"))
    refused = run_cli("stage", "ppo", "--config", str(config), "ppo.min_rm_accuracy=1.01")
    assert refused.returncode != 0
    assert "is below the required 1.010" in refused.stderr + refused.stdout
    forced = run_cli(
        "stage",
        "ppo",
        "--config",
        str(config),
        "ppo.min_rm_accuracy=1.01",
        "ppo.force=true",
        "ppo.max_steps=2",
        "ppo.adaptive_kl=true",
        "ppo.target_kl=0.01",
    )
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert f"critic from {sft_and_rm / 'reward'}" in forced.stderr  # the critic starts from the RM
    history = json.loads((tmp_path / "run" / "ppo" / "log_history.json").read_text())
    assert "reward/raw" in history[0]  # learned RM: raw and normalised scores
    manifest = json.loads((tmp_path / "run" / "ppo" / "MANIFEST.json").read_text())
    assert manifest["inputs"]["reward"]["path"] == str((sft_and_rm / "reward").resolve())


def test_batch_sizes_that_do_not_divide_are_refused(sft_and_rm: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, sft_and_rm)
    result = run_cli("stage", "ppo", "--config", str(config), "ppo.rollout_batch_size=6")
    assert result.returncode != 0
    assert "ppo.rollout_batch_size=6" in result.stderr and "multiple of the mini-batch" in result.stderr


@pytest.mark.parametrize("accelerate_config", ["zero2.yaml", "zero3.yaml"])
def test_ppo_under_two_process_deepspeed_saves_a_loadable_policy(
    accelerate_config: str, sft_and_rm: Path, tmp_path: Path
) -> None:
    config = _config(tmp_path, sft_and_rm)
    settings = ("ppo.max_steps=2", "ppo.save_steps=1", "ppo.rollout_batch_size=4")

    def launch(processes: int, env: dict | None = None) -> subprocess.CompletedProcess:
        return accelerate_launch(
            accelerate_config,
            "alignment.stages.ppo",
            "--config",
            str(config),
            *settings,
            extra=("--num_processes", str(processes), "--mixed_precision", "no"),
            env=env,
        )

    if accelerate_config == "zero2.yaml":  # killed, then resumed on another count: refused, saying what to do
        assert launch(2, fault("checkpoint:1")).returncode != 0
        refused = launch(1)
        assert refused.returncode != 0
        assert "DeepSpeed ZeRO shards of the optimiser state written by 2 processes" in refused.stderr
        assert "Resume on 2 processes" in refused.stderr
    result = launch(2)
    assert result.returncode == 0, result.stderr[-4000:]
    artifact = tmp_path / "run" / "ppo"
    manifest = json.loads((artifact / "MANIFEST.json").read_text())
    assert manifest["world_size"] == 2
    assert (tmp_path / "run" / ".work" / "ppo" / "checkpoint-1" / "COMPLETE").is_file()
    assert "loaded" in _load_policy_in_fresh_process(artifact)  # a fresh process: never inside ZeRO-3


@pytest.mark.parametrize("stage", ["grpo", "rloo"])
@pytest.mark.parametrize("reward", ["rule", "learned"])
def test_grpo_and_rloo_train_with_reward_models_specs(
    stage: str, reward: str, sft_and_rm: Path, tmp_path: Path
) -> None:
    spec = "rule:tasks" if reward == "rule" else str(sft_and_rm / "reward")
    config = write_config(
        tmp_path, **{f"{stage}__init_from": str(sft_and_rm / "sft"), f"{stage}__reward_model": spec}
    )
    result = run_cli("stage", stage, "--config", str(config), f"{stage}.force=true")
    assert result.returncode == 0, result.stderr[-4000:]
    history = json.loads((tmp_path / "run" / stage / "log_history.json").read_text())
    rewards = [entry["rewards/reward/mean"] for entry in history if "rewards/reward/mean" in entry]
    assert len(rewards) == 2
    if reward == "rule":
        assert all(0.0 <= r <= 1.0 for r in rewards)  # gold scores
    assert "loaded" in _load_policy_in_fresh_process(tmp_path / "run" / stage)
