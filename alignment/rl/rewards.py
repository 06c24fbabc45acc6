"""`reward_models` rewards as TRL reward functions, for TRL's GRPOTrainer and RLOOTrainer.

TRL calls `f(prompts, completions, **columns) -> list[float]` with conversational prompts and completions
(lists of messages) and every other dataset column as a keyword. The project's rows carry their gold checker
spec as JSON text in a `gold` column (Arrow cannot hold the differently-shaped specs of the task families as
one struct); rules read it, learned RMs ignore it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any


def completion_text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    return "".join(message["content"] for message in completion if message.get("role") == "assistant")


def trl_reward_function(load: Callable[[], Any], name: str = "reward") -> Callable[..., list[float]]:
    """A TRL reward function over `load()` (called once, at the first batch: after the trainer exists, so a
    ZeRO-3 run can shard the RM with the trainer's accelerator)."""
    holder: dict[str, Any] = {}

    def reward(
        prompts: Sequence[Any], completions: Sequence[Any], gold: Sequence[str] | None = None, **_: Any
    ):
        if "reward" not in holder:
            holder["reward"] = load()
        golds = [json.loads(spec) if spec else None for spec in gold] if gold is not None else None
        texts = [completion_text(c).strip() for c in completions]
        return holder["reward"].score(list(prompts), texts, golds).float().tolist()

    reward.__name__ = name
    return reward


def rows_for_trl(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Prompt rows as TRL expects them: `prompt` messages plus `gold` as JSON text ("" when absent)."""
    return [
        {"prompt": row["prompt"], "gold": json.dumps(row["gold"]) if row.get("gold") is not None else ""}
        for row in rows
    ]
