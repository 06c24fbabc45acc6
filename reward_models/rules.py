"""Programmatic gold rewards: the built-in tasks' checkers and GSM8K final-number exact match.

Checkers take the assistant's plain text (chat template already stripped) and return a score in [0, 1].
Partial credit only where distance is meaningful (word_count, list_items: 1 - |error| / target, floored at 0);
every other family is pass/fail.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import torch

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


def _normalise_number(text: str) -> str | None:
    cleaned = text.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    normal = value.normalize()
    return (
        format(normal, "f") if normal == normal.to_integral() else format(normal, "f").rstrip("0").rstrip(".")
    )


def extract_final_number(text: str) -> str | None:
    """The last number in `text` (after `####` if present), normalised: '1,234.50' -> '1234.5', '$5.' -> '5'."""
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    raw = matches[-1].replace("$", "")
    return _normalise_number(raw)


def gsm8k_score(reference_answer: str, completion: str) -> float:
    """1.0 when the final numbers match exactly (formatting aside), else 0.0."""
    expected = extract_final_number(str(reference_answer))
    got = extract_final_number(completion)
    return float(expected is not None and got is not None and expected == got)


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9']+", text)


def _distance_credit(actual: int, target: int) -> float:
    return max(0.0, 1.0 - abs(actual - target) / max(1, target))


def score_task(gold: dict[str, Any], completion: str) -> float:
    """Gold score of a completion for one built-in task instance (see alignment.data.tasks)."""
    text = completion.strip()
    family = gold.get("family")
    if not text:
        return 0.0
    if family == "arithmetic":
        got = extract_final_number(text)
        return float(got is not None and got == _normalise_number(str(gold["answer"])))
    if family == "word_count":
        return _distance_credit(len(_words(text)), int(gold["n"]))
    if family == "lowercase":
        return float(any(c.isalpha() for c in text) and text == text.lower())
    if family == "uppercase":
        return float(any(c.isalpha() for c in text) and text == text.upper())
    if family in ("include_word", "avoid_word"):
        present = re.search(rf"\b{re.escape(gold['word'])}\b", text, flags=re.IGNORECASE) is not None
        return float(present if family == "include_word" else not present)
    if family == "end_punctuation":
        mark = gold["mark"]
        if mark == "...":
            return float(text.endswith("...") or text.endswith("\u2026"))
        return float(text.endswith(mark) and not text.endswith("..." + mark))
    if family == "list_items":
        items = [item.strip() for item in text.strip(".").split(",")]
        if any(not item for item in items):
            return 0.0
        return _distance_credit(len(items), int(gold["n"]))
    if family == "starts_with":
        words = _words(text)
        return float(bool(words) and words[0].lower() == gold["word"].lower())
    raise ValueError(f"unknown task family {family!r} in gold spec {gold}")


def score_gold(gold: dict[str, Any], completion: str) -> float:
    kind = gold.get("type")
    if kind == "task":
        return score_task(gold, completion)
    if kind == "gsm8k":
        return gsm8k_score(gold["answer"], completion)
    raise ValueError(f"unknown gold type {kind!r}; expected 'task' or 'gsm8k'")


class RuleReward:
    """The reward protocol over gold checkers: `rule:tasks` or `rule:gsm8k`. Needs each row's gold spec."""

    def __init__(self, kind: str) -> None:
        if kind not in ("tasks", "gsm8k"):
            raise ValueError(f"unknown rule {kind!r}; use rule:tasks or rule:gsm8k")
        self.kind = kind

    def score(
        self, prompts: Sequence[Any], completions: Sequence[str], golds: Sequence[dict] | None = None
    ) -> torch.Tensor:
        if golds is None or len(golds) != len(completions) or any(g is None for g in golds):
            raise ValueError(
                f"rule:{self.kind} needs a gold spec for every completion (rows with a `gold` field)"
            )
        expected = "task" if self.kind == "tasks" else "gsm8k"
        for gold in golds:
            if gold.get("type") != expected:
                raise ValueError(f"rule:{self.kind} got a gold spec of type {gold.get('type')!r}")
        return torch.tensor(
            [score_gold(g, c) for g, c in zip(golds, completions, strict=True)], dtype=torch.float32
        )
