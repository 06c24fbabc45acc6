"""`python -m bench stages`: log figures, the same-work check, the plain TRL arm's settings, commands and table."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench import stages
from tests.helpers import REPO

PPO_HISTORY = [
    {
        "time/generation_s": 1.0,
        "time/forward_s": 0.5,
        "time/scoring_s": 0.25,
        "time/training_s": 2.0,
        "time/iteration_s": 4.0,
        "throughput/samples_per_s": 2.0,  # 8 samples
        "throughput/response_tokens_per_s": 10.0,  # 40 response tokens
        "num_tokens": 100.0,
    },
    {
        "time/generation_s": 2.0,
        "time/forward_s": 1.5,
        "time/scoring_s": 0.5,
        "time/training_s": 4.0,
        "time/iteration_s": 8.0,
        "throughput/samples_per_s": 1.0,  # 8 samples
        "throughput/response_tokens_per_s": 5.0,  # 40 response tokens
        "num_tokens": 210.0,  # cumulative
    },
]


def test_ppo_log_figures_sum_the_iterations() -> None:
    figures = stages.ppo_log_figures(PPO_HISTORY)
    assert figures["train_runtime_s"] == 12.0
    assert figures["samples"] == 16
    assert figures["samples_per_s"] == pytest.approx(16 / 12)
    assert figures["num_tokens"] == 210.0
    assert figures["response_tokens"] == 80
    assert figures["phases_s"] == {
        "generation": 3.0,
        "rollout_forward": 2.0,
        "scoring": 0.75,
        "training": 6.0,
    }


def test_ppo_log_figures_refuse_a_log_without_iterations() -> None:
    with pytest.raises(ValueError, match="time/iteration_s"):
        stages.ppo_log_figures([{"loss": 1.0}])


def test_trl_log_figures() -> None:
    history = [
        {"loss": 2.0, "num_tokens": 50.0, "step": 1},
        {"loss": 1.0, "num_tokens": 120.0, "step": 2},
        {"train_runtime": 4.0, "train_samples_per_second": 2.0, "step": 2},
    ]
    assert stages.trl_log_figures(history) == {
        "train_runtime_s": 4.0,
        "samples_per_s": 2.0,
        "samples": 8,
        "num_tokens": 120.0,
    }
    with pytest.raises(ValueError, match="train_runtime"):
        stages.trl_log_figures(history[:2])


def test_grpo_completion_tokens_count_each_generation_once() -> None:
    history = [
        {"completions/mean_length": 16.0, "num_tokens": 156.0},
        {"loss": 0.1},  # a step that trained on a buffered generation
        {"completions/mean_length": 12.5, "num_tokens": 300.0},
        {"train_runtime": 3.0, "completions/mean_length": 99.0},  # the summary entry is not a generation
    ]
    assert stages.grpo_completion_tokens(history, generation_batch_size=8) == 8 * 16 + 8 * 12.5


@pytest.mark.parametrize(
    ("ours", "plain", "matched", "words"),
    [
        ({"num_tokens": 1000}, {"num_tokens": 1000}, True, "num_tokens match"),
        ({"num_tokens": 1000}, {"num_tokens": 995}, True, "num_tokens match"),  # 0.5%
        ({"num_tokens": 1000}, {"num_tokens": 980}, False, "num_tokens differ"),  # 2%
        ({"num_tokens": None, "samples": 8}, {"num_tokens": 10, "samples": 8}, True, "samples match"),
        ({"num_tokens": None, "samples": 8}, {"num_tokens": None, "samples": 16}, False, "samples differ"),
        ({"num_tokens": None, "samples": None}, {"num_tokens": None, "samples": 8}, False, "no samples"),
    ],
)
def test_same_work(ours: dict, plain: dict, matched: bool, words: str) -> None:
    result, message = stages.same_work(ours, plain)
    assert result is matched
    assert words in message


def _smoke(stage: str, *overrides: str):
    from alignment.config import load_pipeline, stage_args
    from alignment.stages.common import device_defaults

    pipeline = load_pipeline(REPO / "configs" / "pipelines" / "smoke.yaml", list(overrides))
    return pipeline, stage_args(pipeline, stage, output_dir="/tmp/unused", **device_defaults())


def test_plain_trl_config_takes_our_resolved_trl_values_only() -> None:
    pipeline, args = _smoke("dpo", "dpo.max_steps=3", "dpo.gradient_accumulation_steps=2", "seed=7")
    config = stages.plain_trl_config(pipeline, "dpo", args)
    assert config["max_steps"] == 3
    assert config["gradient_accumulation_steps"] == 2
    assert config["per_device_train_batch_size"] == 4
    assert config["max_length"] == 256
    assert config["learning_rate"] == 1.0e-3
    assert config["lr_scheduler_type"] == "constant"  # an enum in the config object, its value here
    assert config["beta"] == 0.1
    assert config["seed"] == 7
    assert config["use_cpu"] == args.use_cpu
    assert config["bf16"] == args.bf16
    for ours_only in ("data", "eval_data", "model", "init_from", "reference_from", "output_dir", "report_to"):
        assert ours_only not in config
    import trl

    trl.DPOConfig(output_dir="/tmp/unused", **config)  # every key is one TRL's config accepts


def test_plain_trl_config_for_sft_mirrors_packing() -> None:
    pipeline, args = _smoke("sft", "sft.packing=true")
    config = stages.plain_trl_config(pipeline, "sft", args)
    assert config["packing"] is True
    assert config["padding_free"] == args.padding_free


def test_plain_unsupported() -> None:
    pipeline, args = _smoke("dpo")
    assert stages.plain_unsupported(pipeline, "dpo", args) is None
    pipeline, args = _smoke("dpo", "dpo.reference_from=sft")
    assert "reference_from" in stages.plain_unsupported(pipeline, "dpo", args)
    pipeline, args = _smoke("grpo", "grpo.reward_model=reward")
    assert "rule rewards only" in stages.plain_unsupported(pipeline, "grpo", args)
    pipeline, args = _smoke("ppo")
    assert "our own trainer" in stages.plain_unsupported(pipeline, "ppo", args)
    pipeline, args = _smoke("sft", "model.tuning.method=freeze")
    assert "full and lora only" in stages.plain_unsupported(pipeline, "sft", args)


def test_stage_and_plain_commands() -> None:
    out = Path("/tmp/bench")
    single = stages.stage_command("dpo", "configs/pipelines/smoke.yaml", out, 2, None, 1)
    assert single[:5] == [sys.executable, "-m", "alignment.cli", "stage", "dpo"]
    assert "--force" in single
    assert "dpo.max_steps=2" in single and f"output_dir={out}" in single
    # the user's overrides come first, so that the bench's own (steps, output_dir) win
    with_extra = stages.stage_command(
        "dpo", "smoke.yaml", out, 2, None, 1, ("dpo.beta=0.2", "dpo.max_steps=9")
    )
    assert (
        with_extra.index("dpo.beta=0.2")
        < with_extra.index("dpo.max_steps=9")
        < with_extra.index("dpo.max_steps=2")
    )
    zero3 = stages.stage_command(
        "dpo", "configs/pipelines/smoke.yaml", out, 2, "configs/accelerate/zero3.yaml", 1
    )
    assert zero3[:8] == [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/zero3.yaml",
        "--num_processes", "1", "-m",
    ]  # fmt: skip
    assert zero3[8] == "alignment.stages.dpo"
    plain = stages.plain_command(out / "plain" / "dpo", "configs/accelerate/zero3.yaml", 1)
    assert plain[:7] == zero3[:7]
    assert plain[7] == str(stages.PLAIN_SCRIPT)
    assert plain[-4:] == ["--settings", str(out / "plain/dpo/settings.json"), "--out", str(out / "plain/dpo")]


def _row(stage: str, **extra: object) -> dict:
    return {
        "model": "tiny",
        "stage": stage,
        "method": "full",
        "tokens_per_s": 100.0,
        "samples_per_s": 2.0,
        "mfu": 0.05,
        "train_runtime_s": 3.0,
        "peak_rss_gib": 1.0,
        **extra,
    }


def test_table_shows_the_ratio_or_why_there_is_none() -> None:
    result = {
        "mfu_against": "fp32",
        "runs": [
            _row(
                "sft", plain_trl={"tokens_per_s": 80.0, "ratio_ours_over_plain": 1.25, "same_work": "match"}
            ),
            _row(
                "dpo", plain_trl={"tokens_per_s": 90.0, "ratio_ours_over_plain": None, "same_work": "differ!"}
            ),
            _row(
                "ppo",
                plain_trl={"skipped": "our own"},
                phases_s={"generation": 1.0, "training": 2.0},
                phase_mfu={"generation": 0.04, "training": 0.5},
            ),
        ],
    }
    text = stages.table(result)
    assert "| tiny | sft | full | 100 | 2.00 | 5.0% | 3.0 | 1.00 | 80 | 1.25 |" in text
    assert "| tiny | dpo | full | 100 | 2.00 | 5.0% | 3.0 | 1.00 | 90 | - |" in text
    assert "- tiny dpo: differ!" in text
    assert "- tiny ppo: our own" in text
    assert "- tiny ppo loop 3.0 s: generation 1.0 s (MFU 4.0%), training 2.0 s (MFU 50.0%)" in text


def test_matmul_peak_is_the_best_burst_in_flops_per_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """2 size^3 FLOPs per product over the fastest burst's seconds per product: a fake clock makes the bursts last
    3, 1 and 2 s of 2 products each, so the best is 0.5 s per product."""
    import torch

    ticks = iter([0.0, 3.0, 10.0, 11.0, 20.0, 22.0])
    monkeypatch.setattr(stages.time, "perf_counter", lambda: next(ticks))
    peak = stages.matmul_peak(torch.float32, size=64, repeats=3, burst=2)
    assert peak == pytest.approx(2 * 64**3 / 0.5)


def test_rloo_counts_like_grpo_with_its_old_log_prob_pass_always() -> None:
    from types import SimpleNamespace

    from bench.flops import MatmulParameters, grpo_flops

    size = MatmulParameters(body=100, lm_head=1000, hidden=10, layers=4)
    figures = {"num_tokens": 10, "completion_tokens": 4}
    # Aligned generation (accumulation 1 = steps_per_generation 1 x iterations 1): GRPO skips the old-log-prob pass.
    args = SimpleNamespace(steps_per_generation=1, num_iterations=1, beta=0.05, gradient_accumulation_steps=1)
    grpo = stages.run_flops("grpo", "lora", size, figures, args)
    rloo = stages.run_flops("rloo", "lora", size, figures, args)
    assert grpo == grpo_flops(size, "lora", 10, 4, 1, 0.05, old_logprob_pass=False)
    assert rloo - grpo == 2 * (100 * 10 + 1000 * 4)  # one more forward pass over the generation
