"""A stage that goes NaN stops, names the step and publishes nothing: every stage with a poisoned learning rate
(1e30: Adam's first update moves each weight by ~1e30, the next forward pass overflows; 1e38 would overflow
torch's Adam step size itself, another error), and a reward model whose head is NaN refused by
`alignment rm-check`."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignment import artifacts
from tests.helpers import run_cli, write_config

pytestmark = pytest.mark.integration

POISON = "1e30"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A finished SFT and RM that the poisoned policy stages start from."""
    tmp = tmp_path_factory.mktemp("nonfinite")
    config = write_config(tmp)
    result = run_cli("run", str(config), "stages=[sft,reward]")
    assert result.returncode == 0, result.stderr[-3000:]
    return config


def _poisoned(config: Path, stage: str, *overrides: str) -> tuple[str, str]:
    """Runs `stage` (after the stages it needs, already complete) with a learning rate of 1e38; (console, log)."""
    before = {"sft": [], "reward": ["sft"], "ppo": ["sft"]}.get(stage, ["sft", "reward"])
    result = run_cli(
        "run",
        str(config),
        f"stages=[{','.join([*before, stage])}]",
        f"{stage}.learning_rate={POISON}",
        *overrides,
    )
    output = config.parent / "run"  # write_config's output_dir
    log = (output / "logs" / f"{stage}.log").read_text()
    assert result.returncode != 0, (stage, result.stdout[-2000:])
    assert not artifacts.is_complete(output / stage), f"{stage}: a NaN-trained artifact was published"
    return result.stdout + result.stderr, log


@pytest.mark.parametrize(
    ("stage", "overrides"),
    [
        ("sft", ()),
        ("reward", ()),
        ("dpo", ()),
        ("ppo", ()),  # rule reward; 4 optimiser steps per iteration: the NaN shows within the first
        ("grpo", ("grpo.reward_model=reward", "grpo.min_rm_accuracy=0")),  # the RM's scores differ in a group
        ("rloo", ("rloo.reward_model=reward", "rloo.min_rm_accuracy=0")),
    ],
)
def test_a_stage_that_goes_non_finite_stops_and_publishes_nothing(
    base: Path, tmp_path: Path, stage: str, overrides: tuple[str, ...]
) -> None:
    config = base
    if stage in ("sft", "reward"):  # their good artifacts serve the other stages: poison them elsewhere
        config = write_config(tmp_path)
        if stage == "reward":
            overrides = (f"reward.init_from={base.parent / 'run' / 'sft'}",)
    console, log = _poisoned(config, stage, *overrides)
    assert "NonFiniteError" in log and "Stopped; nothing was published." in log
    assert f"[{stage}] step " in log and ("nan" in log or "inf" in log)
    assert "lower the learning rate" in console  # the stage's own error reaches the console


def test_rm_check_refuses_a_reward_model_that_scores_nan(base: Path, tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    good = base.parent / "run" / "reward"
    broken = tmp_path / "rm"
    shutil.copytree(good, broken)
    weights = load_file(broken / "model.safetensors")
    head = next(name for name in weights if name.startswith("score."))
    weights[head] = weights[head] * float("nan")
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    held_out = base.parent / "run" / ".work" / "reward" / "data" / "train_eval.jsonl"
    result = run_cli(
        "rm-check", "--rm", str(broken), "--data", str(held_out), "--out", str(tmp_path / "report")
    )
    assert result.returncode != 0
    assert "produced non-finite scores" in result.stderr  # LearnedRewardModel.raw_score refuses them
    assert not (tmp_path / "report" / "diagnostics.json").exists()
