"""Built-in verifiable tasks: the embedded default data set, generated deterministically from a seed.

Short instructions a 135M-parameter instruct model can learn, each with a programmatic checker
(`reward_models.rules.score_task`) that gives a GOLD score in [0, 1]. So the whole pipeline runs offline, and
PPO, DPO and the RM can be measured against a reward no model wrote.

Each instance has a prompt, a reference response that passes its check (SFT data, the `chosen` side of pairs)
and a plausible rejected response that fails it (right format, wrong detail: an off-by-one number, one word too
many, one capital letter). Families:
- arithmetic: add / subtract / multiply two small numbers; the final number must be right.
- word_count: reply in exactly N words (partial credit by distance).
- lowercase / uppercase: the whole reply in one case.
- include_word / avoid_word: use / never use a given word.
- end_punctuation: end the reply with a given mark.
- list_items: a comma-separated list of exactly N items of a category (partial credit by distance).
- starts_with: begin the reply with a given word.

Instances are drawn with `random.Random(seed)`: `generate(n, seed)` is reproducible. Prompts are split by a hash
of their text into `train` (80%) and `test` (20%) halves, so `split="test"` gives held-out prompts that no
`train` set of any seed contains (within a split, prompts can repeat: the space of short tasks is finite).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Any

FAMILIES: tuple[str, ...] = (
    "arithmetic",
    "word_count",
    "lowercase",
    "uppercase",
    "include_word",
    "avoid_word",
    "end_punctuation",
    "list_items",
    "starts_with",
)

TOPICS = (
    "the sea",
    "a garden",
    "winter",
    "music",
    "the city",
    "a river",
    "the moon",
    "coffee",
    "mountains",
    "a library",
    "the forest",
    "rain",
    "a train",
    "the desert",
    "bread",
    "summer",
    "a bicycle",
    "the sky",
    "a market",
    "the night",
    "snow",
    "a lake",
    "an island",
    "the sun",
    "a bridge",
    "tea",
    "a cat",
    "a dog",
    "the wind",
    "a storm",
    "spring",
    "autumn",
    "a castle",
    "a museum",
    "the beach",
    "a village",
    "a song",
    "the stars",
    "a kitchen",
    "a boat",
)
ADJECTIVES = (
    "calm",
    "bright",
    "quiet",
    "cold",
    "warm",
    "busy",
    "green",
    "soft",
    "old",
    "gentle",
    "wide",
    "deep",
    "fresh",
    "clear",
    "slow",
    "lovely",
)
NOUNS = ("light", "sound", "color", "morning", "evening", "path", "story", "voice", "wind", "shadow", "water")
WORDS = ("blue", "happy", "stone", "window", "friend", "simple", "golden", "little", "early", "silver")
CATEGORIES = {
    "fruits": ("apple", "banana", "cherry", "grape", "lemon", "mango", "orange", "pear", "plum", "peach"),
    "colors": ("red", "blue", "green", "yellow", "purple", "orange", "black", "white", "pink", "brown"),
    "animals": ("cat", "dog", "horse", "rabbit", "lion", "tiger", "bear", "fox", "wolf", "mouse"),
    "countries": (
        "France",
        "Japan",
        "Brazil",
        "Kenya",
        "Canada",
        "India",
        "Spain",
        "Peru",
        "Egypt",
        "Norway",
    ),
}
MARKS = {"!": "an exclamation mark", "?": "a question mark", "...": "an ellipsis (...)"}


def _sentence(rng: random.Random, topic: str, words: int | None = None) -> str:
    """A plain sentence about `topic`; with `words`, exactly that many words: "Summer is calm, warm and soft." """
    if words is None:
        return f"{topic.capitalize()} is {rng.choice(ADJECTIVES)} and {rng.choice(ADJECTIVES)} in the {rng.choice(NOUNS)}."
    head = topic.capitalize().split() + ["is"]
    k = words - len(head)  # words left for the description
    if k <= 0:
        return " ".join(head[:words]) + "."
    if k == 1:
        return " ".join(head + [rng.choice(ADJECTIVES)]) + "."
    adjectives = rng.sample(ADJECTIVES, k - 1)
    listed = ", ".join(adjectives[:-1]) + (" and " if len(adjectives) > 1 else "and ") + adjectives[-1]
    if len(adjectives) == 1:
        listed = f"{rng.choice(('very', 'so', 'quite'))} {adjectives[0]}"
    return " ".join(head) + " " + listed + "."


def _arithmetic(rng: random.Random) -> dict[str, Any]:
    op = rng.choice(("+", "-", "*"))
    a, b = (rng.randint(2, 12), rng.randint(2, 12)) if op == "*" else (rng.randint(5, 60), rng.randint(1, 40))
    if op == "-" and b > a:
        a, b = b, a
    answer = a + b if op == "+" else a - b if op == "-" else a * b
    word = {"+": "plus", "-": "minus", "*": "times"}[op]
    return {
        "prompt": f"What is {a} {word} {b}? Reply with the number only.",
        "reference": str(answer),
        "rejected": str(answer + rng.choice((-1, 1))),
        "gold": {"answer": answer},
    }


def _word_count(rng: random.Random) -> dict[str, Any]:
    n, topic = rng.randint(5, 10), rng.choice(TOPICS)
    return {
        "prompt": f"Write one sentence about {topic} in exactly {n} words.",
        "reference": _sentence(rng, topic, n),
        "rejected": _sentence(rng, topic, n + rng.choice((2, 3))),
        "gold": {"n": n},
    }


def _case(rng: random.Random, lower: bool) -> dict[str, Any]:
    topic = rng.choice(TOPICS)
    sentence = _sentence(rng, topic)
    case = "lowercase" if lower else "uppercase (capital)"
    return {
        "prompt": f"Describe {topic} in one sentence, using only {case} letters.",
        "reference": sentence.lower() if lower else sentence.upper(),
        "rejected": sentence,  # ordinary sentence case: one capital (lower) / mostly lowercase (upper)
        "gold": {},
    }


def _include_word(rng: random.Random) -> dict[str, Any]:
    topic, word = rng.choice(TOPICS), rng.choice(WORDS)
    sentence = _sentence(rng, topic)
    return {
        "prompt": f'Write a sentence about {topic} that uses the word "{word}".',
        "reference": sentence[:-1] + f", like something {word}.",
        "rejected": sentence,
        "gold": {"word": word},
    }


def _avoid_word(rng: random.Random) -> dict[str, Any]:
    topic, word = rng.choice(TOPICS), rng.choice(WORDS)
    sentence = _sentence(rng, topic)
    return {
        "prompt": f'Write a sentence about {topic} without using the word "{word}".',
        "reference": sentence,
        "rejected": sentence[:-1] + f", like something {word}.",
        "gold": {"word": word},
    }


def _end_punctuation(rng: random.Random) -> dict[str, Any]:
    topic, mark = rng.choice(TOPICS), rng.choice(tuple(MARKS))
    sentence = _sentence(rng, topic)
    return {
        "prompt": f"Write a sentence about {topic} that ends with {MARKS[mark]}.",
        "reference": sentence[:-1] + mark,
        "rejected": sentence,
        "gold": {"mark": mark},
    }


def _list_items(rng: random.Random) -> dict[str, Any]:
    category = rng.choice(tuple(CATEGORIES))
    n = rng.randint(3, 6)
    items = rng.sample(CATEGORIES[category], n + 1)
    return {
        "prompt": f"List exactly {n} {category}, separated by commas.",
        "reference": ", ".join(items[:n]),
        "rejected": ", ".join(items[: n - 1] if rng.random() < 0.5 else items),
        "gold": {"n": n},
    }


def _starts_with(rng: random.Random) -> dict[str, Any]:
    topic, word = rng.choice(TOPICS), rng.choice(("Yes", "Today", "Sometimes", "Honestly", "Look"))
    sentence = _sentence(rng, topic)
    return {
        "prompt": f'Start your reply with the word "{word}", then say something about {topic}.',
        "reference": f"{word}, {sentence[0].lower()}{sentence[1:]}",
        "rejected": sentence,
        "gold": {"word": word},
    }


_BUILDERS = {
    "arithmetic": _arithmetic,
    "word_count": _word_count,
    "lowercase": lambda rng: _case(rng, lower=True),
    "uppercase": lambda rng: _case(rng, lower=False),
    "include_word": _include_word,
    "avoid_word": _avoid_word,
    "end_punctuation": _end_punctuation,
    "list_items": _list_items,
    "starts_with": _starts_with,
}


TEST_BUCKETS = 2  # of 10: the share of the prompt space reserved for held-out evaluation


def prompt_split(prompt: str) -> str:
    """`train` or `test`, from a stable hash of the prompt text."""
    bucket = int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 10
    return "test" if bucket < TEST_BUCKETS else "train"


def generate(
    n: int, seed: int = 0, families: Sequence[str] | None = None, split: str = "train"
) -> list[dict[str, Any]]:
    """`n` task instances of `split`, balanced over `families` (round-robin), reproducible from `seed`."""
    if split not in ("train", "test"):
        raise ValueError(f"builtin:tasks split must be train or test, got {split!r}")
    chosen = tuple(families) if families else FAMILIES
    unknown = [f for f in chosen if f not in _BUILDERS]
    if unknown:
        raise ValueError(f"unknown task families {unknown}; known: {', '.join(FAMILIES)}")
    rng = random.Random(seed)
    instances = []
    for index in range(n):
        family = chosen[index % len(chosen)]
        spec = _BUILDERS[family](rng)
        while prompt_split(spec["prompt"]) != split:
            spec = _BUILDERS[family](rng)
        instances.append(
            {
                "id": f"tasks-{split}-{seed}-{index}",
                "source": family,
                "prompt": spec["prompt"],
                "reference": spec["reference"],
                "rejected": spec["rejected"],
                "gold": {"type": "task", "family": family, **spec["gold"]},
            }
        )
    return instances


def load_rows(kind: str, cfg: Any) -> list[dict[str, Any]]:
    """Canonical rows of `kind` (sft, preference, prompt) from a DataConfig-like object."""
    instances = generate(cfg.task_count, cfg.seed, cfg.task_families, cfg.split or "train")
    rows = []
    for item in instances:
        base = {
            "prompt": [{"role": "user", "content": item["prompt"]}],
            "source": item["source"],
            "id": item["id"],
            "gold": item["gold"],
        }
        if kind == "sft":
            rows.append({**base, "completion": [{"role": "assistant", "content": item["reference"]}]})
        elif kind == "preference":
            rows.append(
                {
                    **base,
                    "chosen": [{"role": "assistant", "content": item["reference"]}],
                    "rejected": [{"role": "assistant", "content": item["rejected"]}],
                }
            )
        elif kind == "prompt":
            rows.append(base)
        else:
            raise ValueError(f"builtin:tasks gives sft, preference or prompt rows, not {kind!r}")
    return rows
