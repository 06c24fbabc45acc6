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

A data section may be a weighted mixture of sources (`mixture:`, alignment.data.mixture): each source is loaded and
validated on its own as a single source is, then `datasets.interleave_datasets` draws the rows; the composition
(source, revision, weight, rows drawn, content hash) comes back in `LoadResult.mixture`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from alignment.data import mixture as mixing
from alignment.data.formats import FORMATS, detect_format
from alignment.data.snapshot import content_hash, split_train_eval, write_jsonl
from alignment.data.sources import DataError, looks_like_path, read_records
from alignment.data.validate import REASONS, RowError, validate_row
from alignment.schema import ConfigError

KINDS = ("sft", "preference", "prompt", "unpaired")

MIXTURE_SOURCE = "mixture:"
"""`source` of a section with a `mixture` (so the resolved config never shows the unused default source)."""

# Fields added after configs were hashed: left out of the resolved config (and so of the config hash) while they
# hold their default, so every config written before them keeps its hash (alignment.config._plain).
NEW_FIELD = {"omit_when_default": True}


@dataclass
class MixtureSource:
    """One source of a weighted mixture (`data.mixture`); the fields mean what they mean for a single source."""

    source: str = ""
    """A file, dataset folder, `hub:<name>`, `service:NAME@VERSION` or `builtin:tasks`."""
    weight: float = 1.0
    """Relative sampling weight (> 0); the weights are normalised to probabilities."""
    format: str = "auto"
    split: str | None = None
    subset: str | None = None
    revision: str | None = None
    """Hub sources: the dataset revision (tag, branch or commit) to pin."""
    max_rows: int | None = None
    """Keep the first N converted rows of this source before mixing."""
    task_count: int = 512
    task_families: list[str] | None = None


@dataclass
class DataConfig:
    """One data section of a pipeline YAML: one `source`, or a weighted `mixture` of sources."""

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
    revision: str | None = field(default=None, metadata=NEW_FIELD)
    """Hub sources only: the dataset revision (tag, branch or commit) to pin, passed to `load_dataset`."""
    mixture: list[MixtureSource] | None = field(default=None, metadata=NEW_FIELD)
    """A weighted mixture instead of `source`: a list of {source, weight, and optionally format, split, subset,
    revision, max_rows, task_count, task_families}. Each source is loaded and validated as a single source is;
    `seed`, `eval_fraction`, `max_length` and `max_reject_fraction` (checked per source) apply to all, and
    `max_rows` to the mixed rows. Rows are drawn by `datasets.interleave_datasets` with the normalised weights as
    probabilities, this `seed` and `stopping_strategy` (alignment.data.mixture)."""
    stopping_strategy: Literal["first_exhausted", "all_exhausted", "all_exhausted_without_replacement"] = (
        field(default="first_exhausted", metadata=NEW_FIELD)
    )
    """Mixtures only. first_exhausted: stop when one source runs out (no row twice); all_exhausted: go on until
    every source was drawn completely, repeating rows of the others; all_exhausted_without_replacement: every row
    of every source once."""

    def describe(self) -> str:
        """The source, or the mixture's sources and weights: for messages."""
        if self.mixture is None:
            return self.source
        return "mixture(" + ", ".join(f"{entry.source}*{entry.weight:g}" for entry in self.mixture) + ")"

    def __post_init__(self) -> None:
        if self.mixture is None:
            return
        if not self.mixture:
            raise ConfigError("data.mixture is empty: list at least one {source: ..., weight: ...}")
        if self.source not in (DataConfig.source, MIXTURE_SOURCE):
            raise ConfigError(
                f"data has both source ({self.source}) and mixture: give one source, or list it in the mixture"
            )
        self.source = MIXTURE_SOURCE
        for index, part in enumerate(self.mixture):
            if isinstance(part, MixtureSource) and not part.source:
                raise ConfigError(f"data.mixture[{index}] has no source")
        try:
            mixing.probabilities([part.weight for part in self.mixture])
        except ValueError as error:
            raise ConfigError(f"data.{error}") from error


@dataclass
class MixturePart:
    """What one source gave a mixture: recorded in the stage's MANIFEST and W&B dataset artifact."""

    source: str
    revision: str | None
    weight: float
    probability: float
    format: str
    rows_available: int
    """Valid rows of the source (after its own max_rows)."""
    rows_drawn: int
    """Rows of this source in the mixture (repeats counted, with stopping_strategy all_exhausted)."""
    rejected: int
    content_hash: str
    """content_hash of the source's valid rows: the same data gives the same hash."""
    result: LoadResult = field(repr=False)

    def record(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "revision": self.revision,
            "weight": self.weight,
            "probability": round(self.probability, 6),
            "format": self.format,
            "rows_available": self.rows_available,
            "rows_drawn": self.rows_drawn,
            "rejected": self.rejected,
            "content_hash": self.content_hash,
        }


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
    mixture: list[MixturePart] | None = None
    """Mixtures only: each source's part, in the order of `data.mixture`."""

    def composition(self) -> dict[str, Any] | None:
        """The mixture as plain data (None for a single source)."""
        if self.mixture is None:
            return None
        return {"sources": [part.record() for part in self.mixture], "rows": len(self.rows)}

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
    if cfg.mixture is not None:
        return _load_mixture(cfg, kind, token_length)
    if cfg.source == MIXTURE_SOURCE:
        raise DataError(f"source {MIXTURE_SOURCE} needs a `mixture:` list of {{source: ..., weight: ...}}")
    if cfg.revision is not None and (
        cfg.source.startswith(("builtin:", "service:")) or looks_like_path(cfg.source)
    ):
        raise DataError(f"{cfg.source}: `revision` pins hub datasets only (hub:<org>/<name>); remove it")
    if cfg.source.startswith("builtin:"):
        return _load_builtin(cfg, kind, token_length)
    rows: list[dict[str, Any]] = []
    rejects: list[Reject] = []
    converter_name = cfg.format
    if converter_name != "auto" and converter_name not in FORMATS:
        raise DataError(f"unknown format {converter_name!r}; known: {', '.join(sorted(FORMATS))}")
    try:
        records = read_records(cfg.source, cfg.split, cfg.subset, cfg.revision)
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


def _load_mixture(cfg: DataConfig, kind: str, token_length: Any) -> LoadResult:
    """Each source loaded as a single source, formats checked to agree, rows drawn by interleave_datasets."""
    assert cfg.mixture is not None
    results = []
    for entry in cfg.mixture:
        single = replace(
            cfg,
            source=entry.source,
            format=entry.format,
            split=entry.split,
            subset=entry.subset,
            revision=entry.revision,
            max_rows=entry.max_rows,
            task_count=entry.task_count,
            task_families=entry.task_families,
            mixture=None,
        )
        results.append(load(single, kind, token_length=token_length))
    conflict = mixing.format_conflict([(r.source, r.format) for r in results], kind)
    if conflict:
        raise DataError(f"data.mixture: {conflict}")
    weights = [entry.weight for entry in cfg.mixture]
    try:
        probs = mixing.probabilities(weights)
    except ValueError as error:
        raise DataError(f"data.{error}") from error
    empty = [r.source for r in results if not r.rows]
    if empty:  # interleave_datasets would stop at once (first_exhausted) or never draw them
        parts = [
            MixturePart(entry.source, entry.revision, entry.weight, p, r.format, 0, 0, len(r.rejects), "", r)
            for entry, p, r in zip(cfg.mixture, probs, results, strict=True)
        ]
        rejects = [reject for r in results for reject in r.rejects]
        return LoadResult([], rejects, cfg.describe(), "mixture", sum(r.total for r in results), parts)
    drawn = mixing.interleave([len(r.rows) for r in results], probs, cfg.seed, cfg.stopping_strategy)
    if cfg.max_rows is not None:
        drawn = drawn[: cfg.max_rows]
    rows = [results[part].rows[index] for part, index in drawn]
    counts = Counter(part for part, _ in drawn)
    parts = [
        MixturePart(
            source=entry.source,
            revision=entry.revision,
            weight=entry.weight,
            probability=p,
            format=r.format,
            rows_available=len(r.rows),
            rows_drawn=counts.get(index, 0),
            rejected=len(r.rejects),
            content_hash=content_hash(r.rows),
            result=r,
        )
        for index, (entry, p, r) in enumerate(zip(cfg.mixture, probs, results, strict=True))
    ]
    rejects = [reject for r in results for reject in r.rejects]
    formats = sorted({r.format for r in results})
    return LoadResult(rows, rejects, cfg.describe(), "+".join(formats), sum(r.total for r in results), parts)


def load_checked(cfg: DataConfig, kind: str, *, token_length: Any = None) -> LoadResult:
    """`load`, then fail with a clear DataError when rejects exceed `cfg.max_reject_fraction` (in a mixture: in
    any one of its sources, the error naming it)."""
    result = load(cfg, kind, token_length=token_length)
    for part in result.mixture or []:
        try:
            part.result.raise_if_too_many(cfg.max_reject_fraction)
        except DataError as error:
            raise DataError(f"mixture source {part.source}: {error}") from error
    result.raise_if_too_many(cfg.max_reject_fraction)
    return result


__all__ = [
    "KINDS",
    "DataConfig",
    "DataError",
    "LoadResult",
    "MixturePart",
    "MixtureSource",
    "Reject",
    "content_hash",
    "load",
    "load_checked",
    "split_train_eval",
    "write_jsonl",
]
