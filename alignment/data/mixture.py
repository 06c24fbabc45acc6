"""Weighted mixtures of data sources: which rows of which source, in which order.

The sampling is `datasets.interleave_datasets` (probabilities, seed, stopping strategy), run over one small
dataset of row indices per source, so the rows themselves never pass through Arrow (their nested messages and
optional keys come out exactly as they went in). `weights` are normalised to sampling probabilities.

Stopping strategies (interleave_datasets' own): `first_exhausted` (the default) stops as soon as one source has
no rows left, so no row is drawn twice and the smallest source relative to its weight sets the total;
`all_exhausted` goes on until every source has been drawn completely at least once, repeating rows of the
others (oversampling); `all_exhausted_without_replacement` draws every row of every source exactly once, in an
order the weights shape.

Formats: each source is converted to the stage's row kind on its own, so different formats of one family mix
(Alpaca with ShareGPT, HH with `preference`). Sources of different families (preference pairs with
demonstrations) are refused, naming both, except for prompt rows, which every family can give.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

STOPPING_STRATEGIES = ("first_exhausted", "all_exhausted", "all_exhausted_without_replacement")

# Which kind of record each format holds. `builtin` (the built-in tasks) and `oasst_tree` (pairs and
# demonstrations from one tree) give rows of any kind, so they mix with every family.
FORMAT_FAMILIES = {
    "preference": "preference pairs",
    "implicit_preference": "preference pairs",
    "hh": "preference pairs",
    "gsm8k_solutions": "preference pairs",
    "unpaired_preference": "unpaired preference labels",
    "language_modeling": "demonstrations",
    "prompt_completion": "demonstrations",
    "alpaca": "demonstrations",
    "dolly": "demonstrations",
    "sharegpt": "demonstrations",
    "self_instruct": "demonstrations",
    "gsm8k": "demonstrations",
    "stepwise_supervision": "demonstrations",
    "prompt_only": "prompts",
    "prompt_text": "prompts",
    "mt_bench": "prompts",
    "user_oriented": "prompts",
}


def probabilities(weights: Sequence[float]) -> list[float]:
    """Weights -> sampling probabilities (summing to 1); every weight must be a finite number above 0."""
    for index, weight in enumerate(weights):
        if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
            raise ValueError(
                f"mixture[{index}].weight = {weight!r}: every weight must be a number above 0 (a source "
                "you do not want sampled belongs out of the mixture)"
            )
    total = float(sum(weights))
    return [weight / total for weight in weights]


def interleave(
    sizes: Sequence[int], probs: Sequence[float], seed: int, stopping_strategy: str
) -> list[tuple[int, int]]:
    """The (source index, row index) of every row drawn, in order, as `datasets.interleave_datasets` draws them."""
    import datasets

    if stopping_strategy not in STOPPING_STRATEGIES:
        raise ValueError(f"stopping_strategy {stopping_strategy!r}; use one of {STOPPING_STRATEGIES}")
    parts = [
        datasets.Dataset.from_dict({"part": [part] * size, "row": list(range(size))})
        for part, size in enumerate(sizes)
    ]
    mixed = datasets.interleave_datasets(
        parts, probabilities=list(probs), seed=seed, stopping_strategy=stopping_strategy
    )
    return list(zip(mixed["part"], mixed["row"], strict=True))


def format_conflict(formats: Sequence[tuple[str, str]], kind: str) -> str | None:
    """A message naming two sources whose records are of different families, or None. `formats`: (source,
    format) pairs; prompt rows (kind `prompt`) come from every family."""
    if kind == "prompt":
        return None
    first: tuple[str, str, str] | None = None
    for source, fmt in formats:
        family = FORMAT_FAMILIES.get(fmt)
        if family is None:
            continue
        if first is None:
            first = (source, fmt, family)
        elif family != first[2]:
            return (
                f"{first[0]} holds {first[2]} (format {first[1]}) but {source} holds {family} (format {fmt}); "
                f"a mixture of {kind!r} rows takes sources of one kind: mix them in separate stages, or drop one"
            )
    return None
