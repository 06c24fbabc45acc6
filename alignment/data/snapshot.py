"""Freezing rows: a content hash, a deterministic train / held-out split, and a JSONL snapshot file.

The hash covers the canonical JSON of every row in order (sorted keys), so the same data always has the same
hash whatever file or format it came from; the manifest of each artifact records the hashes of its snapshots.

Preference snapshots (the format the preference-data service exports and `service:NAME@VERSION` sources read):

    <snapshot root>/<dataset>/<version>/pairs.jsonl      canonical preference rows (`snapshot_row`), by pair id
    <snapshot root>/<dataset>/<version>/MANIFEST.json    dataset, version, pair count, max pair id, time

The version is `content_hash` of the rows, which is also the first 16 hex digits of the SHA-256 of pairs.jsonl
itself, so a reader checks the file against its name (`resolve_service_snapshot`). The service writes this format
(alignment.service.snapshots); the data layer reads it, from the files, never from the service's database.
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


# ------------------------------------------------------------------------------------------ preference snapshots
SNAPSHOT_FILE = "pairs.jsonl"


def default_snapshot_dir() -> Path:
    """Where snapshots are exported and where `service:NAME@VERSION` sources are read from:
    `$ALIGNMENT_SERVICE_SNAPSHOTS`, else `$ALIGNMENT_HOME/service/snapshots`."""
    if os.environ.get("ALIGNMENT_SERVICE_SNAPSHOTS"):
        return Path(os.environ["ALIGNMENT_SERVICE_SNAPSHOTS"]).expanduser()
    home = Path(os.environ.get("ALIGNMENT_HOME", Path.home() / ".cache" / "alignment")).expanduser()
    return home / "service" / "snapshots"


def snapshot_row(pair_id: int, dataset: str, stored: dict[str, Any]) -> dict[str, Any]:
    """The row a stage reads: canonical preference messages, `id`, and `margin` / `source` from metadata."""
    row = {"id": f"{dataset}-{pair_id}", "prompt": stored["prompt"], "chosen": stored["chosen"]}
    row["rejected"] = stored["rejected"]
    metadata = stored.get("metadata") or {}
    for key in ("margin", "source"):
        if key in metadata:
            row[key] = metadata[key]
    if metadata:
        row["metadata"] = metadata
    return row


def resolve_service_snapshot(name: str, version: str, root: str | Path | None = None) -> Path:
    """The pairs.jsonl of snapshot NAME@VERSION, checked against its version hash."""
    path = Path(root or default_snapshot_dir()) / name / version / SNAPSHOT_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"service snapshot {name}@{version} not found at {path}: create it with "
            f"POST /v1/datasets/{name}/snapshots, or point ALIGNMENT_SERVICE_SNAPSHOTS at the service's snapshot_dir"
        )
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest()[:16] != version:
        raise ValueError(
            f"{path}: content hash {digest.hexdigest()[:16]} != version {version}; the file was altered"
        )
    return path
