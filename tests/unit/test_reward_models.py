"""reward_models: the Bradley-Terry loss, scoring with the RM's own tokenizer, padding sides, normalisation, load()."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import reward_models
from reward_models.check import RewardModelNotGoodEnough, check_good_enough
from reward_models.learned import LearnedRewardModel


def test_bradley_terry_loss_matches_hand_computation() -> None:
    """TRL's RewardTrainer.compute_loss (what the stage trains with) on fixed logits."""
    from collections import defaultdict

    from trl import RewardTrainer

    logits = torch.tensor([[2.0], [0.5], [1.0], [1.5]])  # chosen: 2.0, 0.5; rejected: 1.0, 1.5

    class FixedModel:
        training = True

        def __call__(self, **kwargs):
            return SimpleNamespace(logits=logits)

    identity = SimpleNamespace(gather_for_metrics=lambda x: x, gather=lambda x: x)
    stub = SimpleNamespace(
        model=FixedModel(),
        accelerator=identity,
        args=SimpleNamespace(center_rewards_coefficient=None),
        _metrics={"train": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {"input_ids": torch.zeros(4, 3, dtype=torch.long), "attention_mask": torch.ones(4, 3)}
    loss = RewardTrainer.compute_loss(stub, stub.model, dict(inputs))
    # -mean(log sigmoid(2.0 - 1.0), log sigmoid(0.5 - 1.5)) = mean(log(1+e^-1), log(1+e^1))
    expected = (torch.log1p(torch.exp(torch.tensor(-1.0))) + torch.log1p(torch.exp(torch.tensor(1.0)))) / 2
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    margin = torch.tensor([0.5, 0.5])
    loss_with_margin = RewardTrainer.compute_loss(stub, stub.model, {**inputs, "margin": margin})
    expected_margin = (
        torch.log1p(torch.exp(torch.tensor(-0.5))) + torch.log1p(torch.exp(torch.tensor(1.5)))
    ) / 2
    assert loss_with_margin.item() == pytest.approx(expected_margin.item(), abs=1e-6)
    assert stub._metrics["train"]["accuracy"] == [0.5, 0.5]  # one entry per call


def _tiny_rm(tiny_model_dir: Path, out: Path, seed: int, reorder_tokens: bool = False) -> Path:
    """A tiny random sequence-classification RM saved to `out`; optionally with a tokenizer of other token ids."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    if reorder_tokens:  # same text, different ids: two extra tokens shift nothing but add new vocabulary
        tokenizer.add_tokens(["hello world", "Answer:"])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(config)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


PROMPTS = [
    [{"role": "user", "content": "Say hello world"}],
    "What is 2+2? Answer:",
    [{"role": "user", "content": "x"}],
]
COMPLETIONS = ["hello world", "4", "a much longer reply that needs padding in any batch it joins"]


def test_scores_are_batch_and_padding_side_invariant(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = _tiny_rm(tiny_model_dir, tmp_path / "rm", seed=1)
    right = LearnedRewardModel(path, batch_size=3, padding_side="right").score(PROMPTS, COMPLETIONS)
    left = LearnedRewardModel(path, batch_size=3, padding_side="left").score(PROMPTS, COMPLETIONS)
    single = LearnedRewardModel(path, batch_size=1).score(PROMPTS, COMPLETIONS)
    assert right.shape == (3,) and right.dtype == torch.float32
    assert torch.isfinite(right).all()
    assert torch.allclose(right, single, atol=1e-5)
    assert torch.allclose(left, single, atol=1e-5)
    assert len(set(right.tolist())) == 3


def test_rm_retokenises_text_with_its_own_tokenizer(tiny_model_dir: Path, tmp_path: Path) -> None:
    plain = LearnedRewardModel(_tiny_rm(tiny_model_dir, tmp_path / "a", seed=1))
    other = LearnedRewardModel(_tiny_rm(tiny_model_dir, tmp_path / "b", seed=2, reorder_tokens=True))
    text = other.render(PROMPTS[0], COMPLETIONS[0])
    assert text == plain.render(PROMPTS[0], COMPLETIONS[0])  # same chat template, same text
    ids_plain = plain.tokenizer(text, add_special_tokens=False)["input_ids"]
    ids_other = other.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids_plain != ids_other  # the second RM sees its own tokens
    assert len(ids_other) < len(ids_plain)
    # a mix of the two scores each with its own tokenizer: equal to the weighted sum of the parts
    mix = reward_models.MixedReward([(0.25, plain), (0.75, other)])
    expected = 0.25 * plain.score(PROMPTS, COMPLETIONS) + 0.75 * other.score(PROMPTS, COMPLETIONS)
    assert torch.allclose(mix.score(PROMPTS, COMPLETIONS), expected, atol=1e-6)


def test_normalisation_statistics_apply(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = _tiny_rm(tiny_model_dir, tmp_path / "rm", seed=3)
    raw = LearnedRewardModel(path).raw_score(PROMPTS, COMPLETIONS)
    (path / "normalization.json").write_text(json.dumps({"mean": 0.5, "std": 2.0, "n": 3, "source": "test"}))
    normalised = LearnedRewardModel(path).score(PROMPTS, COMPLETIONS)
    assert torch.allclose(normalised, (raw - 0.5) / 2.0, atol=1e-6)
    (path / "normalization.json").write_text(json.dumps({"mean": 0.0, "std": 0.0}))
    with pytest.raises(ValueError, match="std must be positive"):
        LearnedRewardModel(path)


def test_load_specs(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = _tiny_rm(tiny_model_dir, tmp_path / "rm", seed=4)
    assert isinstance(reward_models.load(path), LearnedRewardModel)
    assert isinstance(reward_models.load("rule:tasks"), reward_models.RewardModel)
    mix = reward_models.load(f"mix:0.5*{path}+0.5*rule:gsm8k")
    golds = [{"type": "gsm8k", "answer": "4"}] * 3
    scores = mix.score(PROMPTS, ["4", "4", "5"], golds)
    learned = LearnedRewardModel(path).score(PROMPTS, ["4", "4", "5"])
    assert torch.allclose(scores, 0.5 * learned + 0.5 * torch.tensor([1.0, 1.0, 0.0]), atol=1e-6)
    with pytest.raises(ValueError, match="no such RM artifact"):
        reward_models.load(tmp_path / "missing")
    with pytest.raises(ValueError, match="must look like 0.5\\*rule:tasks"):
        reward_models.load("mix:rule:tasks")


def test_policy_refuses_an_rm_below_threshold(tmp_path: Path) -> None:
    (tmp_path / "diagnostics.json").write_text(
        json.dumps({"accuracy": 0.55, "accuracy_ci95": [0.5, 0.6], "n_pairs": 200})
    )
    with pytest.raises(RewardModelNotGoodEnough, match="accuracy 0.550 .* below the required 0.600"):
        check_good_enough(tmp_path, 0.6)
    assert check_good_enough(tmp_path, 0.6, force=True)["accuracy"] == 0.55
    assert check_good_enough(tmp_path, 0.5)["n_pairs"] == 200
    with pytest.raises(RewardModelNotGoodEnough, match="no diagnostics.json"):
        check_good_enough(tmp_path / "other", 0.6)
