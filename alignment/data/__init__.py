"""The data layer: any supported source and format in, validated canonical conversational rows out.

Canonical rows (what every stage consumes):
- message: {"role": "system" | "user" | "assistant", "content": str}
- `sft`: {"prompt": [messages ending with user], "completion": [assistant message]}, or {"text": str}
- `preference`: {"prompt": [...], "chosen": [assistant message], "rejected": [assistant message]}
- `prompt`: {"prompt": [...]}
- `unpaired`: {"prompt": [...], "completion": [assistant message], "label": bool}
Any row may also carry `source` (origin label, e.g. task family), `id`, `gold` (a JSON checker spec for
reward_models.rules) and `margin`.

Bad rows are never silently dropped: each reject keeps its reason code, file and line, and `load_checked` fails
with a summary when rejects exceed `max_reject_fraction`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from alignment.data.formats import FORMATS, detect_format
from alignment.data.snapshot import content_hash, split_train_eval, write_jsonl
from alignment.data.sources import DataError, read_records
from alignment.data.validate import REASONS, RowError, validate_row

KINDS = ("sft", "preference", "prompt", "unpaired")


@dataclass
class DataConfig:
    """One data section of a pipeline YAML."""

    source: str = "builtin:tasks"
    """A file (.jsonl, .jsonl.gz, .json), a dataset folder (save_to_disk), `hub:<name>`, or `builtin:tasks`."""
    format: str = "auto"
    """`auto` detects from the first record; or one of alignment.data.formats.FORMATS."""
    split: str | None = None
    """Split of a dataset folder or hub dataset (or the file-name stem in a folder of files)."""
    subset: str | None = None
    """Hub configuration name."""
    max_rows: int | None = None
    """Keep the first N converted rows (deterministic)."""
    eval_fraction: float = 0.0
    """Held-out fraction, split by `seed` (alignment.data.snapshot.split_train_eval)."""
    seed: int = 0
    max_reject_fraction: float = 0.01
    """The stage fails when more than this fraction of rows is rejected."""
    max_length: int | None = None
    """In tokens; longer rows are rejected `too_long` and reported, never truncated."""
    task_count: int = 512
    """builtin:tasks only: number of generated task instances."""
    task_families: list[str] | None = None
    """builtin:tasks only: restrict to these families (alignment.data.tasks.FAMILIES)."""


@dataclass
class Reject:
    source: str
    line: int | None
    reason: str
    detail: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        return f"{where}: {self.reason} ({self.detail})"


@dataclass
class LoadResult:
    rows: list[dict[str, Any]]
    rejects: list[Reject]
    source: str
    format: str
    total: int
    """Rows produced plus rows rejected: the denominator of the reject fraction."""

    def reject_fraction(self) -> float:
        return len(self.rejects) / self.total if self.total else 0.0

    def raise_if_too_many(self, max_reject_fraction: float) -> None:
        if self.total and self.reject_fraction() <= max_reject_fraction and self.rows:
            return
        if not self.rejects and not self.rows:
            raise DataError(f"{self.source}: no rows")
        counts = Counter(reject.reason for reject in self.rejects)
        summary = ", ".join(f"{reason} x{count}" for reason, count in counts.most_common())
        examples = "\n".join(f"  {reject}" for reject in self.rejects[:5])
        raise DataError(
            f"{len(self.rejects)} of {self.total} rows rejected ({self.reject_fraction():.1%} > "
            f"max_reject_fraction {max_reject_fraction:.1%}): {summary}\n{examples}\n"
            f"Fix the rows listed (reasons: {', '.join(f'{r} = {REASONS[r]}' for r in counts)}), "
            "check `format:` (alignment data check --source ...), or raise max_reject_fraction."
        )


def load(cfg: DataConfig, kind: str, *, token_length: Any = None) -> LoadResult:
    """Convert and validate every record of `cfg.source` into canonical rows of `kind`."""
    if kind not in KINDS:
        raise ValueError(f"unknown row kind {kind!r}; use one of {KINDS}")
    if cfg.source.startswith("builtin:"):
        return _load_builtin(cfg, kind, token_length)
    rows: list[dict[str, Any]] = []
    rejects: list[Reject] = []
    converter_name = cfg.format
    if converter_name != "auto" and converter_name not in FORMATS:
        raise DataError(f"unknown format {converter_name!r}; known: {', '.join(sorted(FORMATS))}")
    try:
        records = read_records(cfg.source, cfg.split, cfg.subset)
        for record in records:
            if record.error:
                rejects.append(Reject(record.file, record.line, record.error, record.detail))
                continue
            if converter_name == "auto":
                try:
                    converter_name = detect_format(record.value)
                except ValueError as error:
                    raise DataError(f"{record.file}:{record.line}: {error}") from error
            try:
                converted = FORMATS[converter_name](record.value, kind)
            except RowError as error:
                rejects.append(Reject(record.file, record.line, error.reason, error.detail))
                continue
            for row in converted:
                reason = _check(row, kind, cfg, token_length)
                if reason:
                    rejects.append(Reject(record.file, record.line, *reason))
                else:
                    rows.append(row)
            if cfg.max_rows is not None and len(rows) >= cfg.max_rows:
                rows = rows[: cfg.max_rows]
                break
    except (FileNotFoundError, ValueError) as error:
        if isinstance(error, DataError):
            raise
        raise DataError(str(error)) from error
    return LoadResult(rows, rejects, cfg.source, converter_name, len(rows) + len(rejects))


def _check(row: dict[str, Any], kind: str, cfg: DataConfig, token_length: Any) -> tuple[str, str] | None:
    reason = validate_row(row, kind)
    if reason:
        return reason, REASONS[reason]
    if cfg.max_length is not None and token_length is not None:
        length = token_length(row)
        if length > cfg.max_length:
            return "too_long", f"{length} tokens > max_length {cfg.max_length}"
    return None


def _load_builtin(cfg: DataConfig, kind: str, token_length: Any) -> LoadResult:
    name = cfg.source.removeprefix("builtin:")
    if name != "tasks":
        raise DataError(f"unknown built-in data set {cfg.source!r}; known: builtin:tasks")
    from alignment.data import tasks

    rows, rejects = [], []
    for index, row in enumerate(tasks.load_rows(kind, cfg)):
        reason = _check(row, kind, cfg, token_length)
        if reason:
            rejects.append(Reject(cfg.source, index + 1, *reason))
        else:
            rows.append(row)
    if cfg.max_rows is not None:
        rows = rows[: cfg.max_rows]
    return LoadResult(rows, rejects, cfg.source, "builtin", len(rows) + len(rejects))


def load_checked(cfg: DataConfig, kind: str, *, token_length: Any = None) -> LoadResult:
    """`load`, then fail with a clear DataError when rejects exceed `cfg.max_reject_fraction`."""
    result = load(cfg, kind, token_length=token_length)
    result.raise_if_too_many(cfg.max_reject_fraction)
    return result


__all__ = [
    "KINDS",
    "DataConfig",
    "DataError",
    "LoadResult",
    "Reject",
    "content_hash",
    "load",
    "load_checked",
    "split_train_eval",
    "write_jsonl",
]
