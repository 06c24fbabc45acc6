"""A trained reward model (sequence classification, one logit) that scores text with its OWN tokenizer.

The policy hands over text (prompt messages + completion string); this module renders it with the RM's chat
template exactly as TRL's RewardTrainer did in training (`apply_chat_template(prompt + [assistant reply])`), so a
policy and an RM with different tokenizers work together. The reward is read at the last non-pad token, whichever
side the batch is padded on (transformers' sequence-classification heads find it from the pad id). Over-long
inputs are truncated from the left so that the end of the response, where the reward is read, is kept.

Normalisation (Ziegler et al., 2019; InstructGPT): `normalization.json` in the artifact holds the mean and std of
the RM's scores on a reference set; `score()` returns (r - mean) / std when present, `raw_score()` the logit.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

NORMALIZATION_FILE = "normalization.json"

Prompt = str | list[dict[str, str]]


def as_messages(prompt: Prompt) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return list(prompt)


class LearnedRewardModel:
    """Scores (prompt, completion) pairs with a sequence-classification RM artifact."""

    def __init__(
        self,
        path: str | Path,
        device: str | torch.device | None = None,
        batch_size: int = 16,
        max_length: int = 2048,
        padding_side: str = "right",
        dtype: torch.dtype | None = None,
        model: Any = None,
        tokenizer: Any = None,
        prepare: Any = None,
    ) -> None:
        """`prepare(model)`, when given, wraps the loaded model (e.g. a DeepSpeed ZeRO-3 inference engine whose
        weights are sharded across processes) and owns its device placement."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.path = Path(path)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.batch_size = batch_size
        self.max_length = max_length
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(self.path)
        self.tokenizer.padding_side = padding_side
        self.tokenizer.truncation_side = "left"
        if self.tokenizer.pad_token is None:
            raise ValueError(
                f"reward model tokenizer at {self.path} has no pad token; set one when training the RM"
            )
        if model is None:
            model = AutoModelForSequenceClassification.from_pretrained(
                self.path, use_safetensors=True, dtype=dtype or torch.float32
            )
        self.model = prepare(model) if prepare is not None else model.to(self.device).eval()
        if self.model.config.num_labels != 1:
            raise ValueError(
                f"{self.path}: a reward model has num_labels=1, this one {self.model.config.num_labels}"
            )
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.normalization = self._read_normalization()

    def _read_normalization(self) -> dict[str, float] | None:
        path = self.path / NORMALIZATION_FILE
        if not path.is_file():
            return None
        stats = json.loads(path.read_text())
        if not stats.get("std") or stats["std"] <= 0:
            raise ValueError(f"{path}: std must be positive, got {stats.get('std')}")
        return stats

    def render(self, prompt: Prompt, completion: str) -> str:
        messages = as_messages(prompt) + [{"role": "assistant", "content": completion}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False)

    @torch.no_grad()
    def raw_score(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> torch.Tensor:
        """Unnormalised reward per pair, float32 on CPU, shape (N,)."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        texts = [self.render(p, c) for p, c in zip(prompts, completions, strict=True)]
        scores = torch.empty(len(texts), dtype=torch.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a batch
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            batch = self.tokenizer(
                [texts[i] for i in index],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
                add_special_tokens=False,  # the chat template already holds them
            ).to(self.device)
            logits = self.model(**batch).logits[:, 0].float().cpu()  # (B,)
            if not torch.isfinite(logits).all():
                raise FloatingPointError(f"reward model {self.path} produced non-finite scores")
            scores[torch.tensor(index)] = logits
        return scores

    def score(
        self, prompts: Sequence[Prompt], completions: Sequence[str], golds: Sequence[dict] | None = None
    ) -> torch.Tensor:
        """Normalised reward (raw when the artifact has no statistics), shape (N,)."""
        return self.normalize(self.raw_score(prompts, completions))

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """(r - mean) / std with the artifact's statistics; raw scores unchanged when it has none."""
        if self.normalization is None:
            return raw
        return (raw - self.normalization["mean"]) / self.normalization["std"]


def normalization_stats(scores: torch.Tensor, source: str) -> dict[str, Any]:
    scores = scores.float()
    return {
        "mean": scores.mean().item(),
        "std": scores.std(unbiased=False).clamp_min(1e-6).item(),
        "n": int(scores.numel()),
        "source": source,
    }
