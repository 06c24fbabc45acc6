"""Freezing rows: a content hash, a deterministic train / held-out split, and a JSONL snapshot file.

The hash covers the canonical JSON of every row in order (sorted keys), so the same data always has the same
hash whatever file or format it came from; the manifest of each artifact records the hashes of its snapshots.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _line(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True, ensure_ascii=False)


def content_hash(rows: Sequence[dict[str, Any]]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(_line(row).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def split_train_eval(
    rows: Sequence[dict[str, Any]], eval_fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Seeded random held-out split by prompt: rows sharing a prompt (OpenAssistant siblings, several solutions
    of one GSM8K question) land on the same side, so nothing held out was seen in training. Fraction in [0, 1);
    both parts keep the original order."""
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    groups: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        key = json.dumps(row.get("prompt", row), sort_keys=True, ensure_ascii=False)
        groups.setdefault(key, []).append(index)
    keys = list(groups)
    random.Random(seed).shuffle(keys)
    target = int(round(len(rows) * eval_fraction))
    if eval_fraction > 0 and len(keys) > 1:
        target = max(1, target)
    held_out: set[int] = set()
    for key in keys:
        if len(held_out) >= target or len(held_out) + len(groups[key]) > max(target, 1) * 1.5 and held_out:
            continue
        held_out.update(groups[key])
        if len(held_out) >= target:
            break
    if len(held_out) == len(rows):  # never hold out everything
        held_out = set()
    train = [row for i, row in enumerate(rows) if i not in held_out]
    evaluation = [row for i, row in enumerate(rows) if i in held_out]
    return train, evaluation


def write_jsonl(rows: Sequence[dict[str, Any]], path: str | Path) -> str:
    """Write rows atomically (temp file, fsync, rename); returns their content hash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(_line(row) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return content_hash(rows)
