"""Is this reward model good enough to optimise against?

From the scores of chosen and rejected responses of held-out pairs:
- pairwise accuracy with a 95% Wilson score interval (Wilson, 1927), ties counted as half;
- accuracy by source (task family, data set) when rows carry a `source` field;
- calibration: accuracy by margin bucket (|r_chosen - r_rejected| quantiles). A usable RM is more often right when
  it is more confident (Ouyang et al., 2022, App. E; Lambert et al., 2024 RewardBench);
- reward-length correlation (Pearson and Spearman over all scored responses) and how often the RM prefers the
  longer response: length is the most common reward-hacking channel (Singhal et al., 2023);
- the fraction of ties (|margin| below `tie_tolerance`).
Pure functions on lists/tensors; the report is JSON plus a short Markdown summary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

Z_95 = 1.959963984540054


def wilson_interval(successes: float, total: int, z: float = Z_95) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (robust at small n and near 0 or 1)."""
    if total == 0:
        return (0.0, 1.0)
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float:
    n = len(xs)
    if n < 2:
        return float("nan")
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    cov = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    var_x = sum((x - mean_x) ** 2 for x in xs)
    var_y = sum((y - mean_y) ** 2 for y in ys)
    if var_x == 0 or var_y == 0:
        return float("nan")
    return cov / math.sqrt(var_x * var_y)


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        average = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[order[k]] = average
        i = j + 1
    return ranks


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    return pearson(_ranks(xs), _ranks(ys))


@dataclass
class Diagnostics:
    n_pairs: int
    accuracy: float
    accuracy_ci95: tuple[float, float]
    tie_fraction: float
    mean_margin: float
    by_source: dict[str, dict[str, Any]] = field(default_factory=dict)
    calibration: list[dict[str, Any]] = field(default_factory=list)
    length_pearson: float = float("nan")
    length_spearman: float = float("nan")
    prefers_longer: float = float("nan")
    """Among pairs whose responses differ in length: how often the RM scores the longer one higher."""
    chosen_is_longer: float = float("nan")
    """The same for the human labels: the baseline a length-only scorer would reach."""
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["accuracy_ci95"] = list(self.accuracy_ci95)
        return _finite(out)

    def above_chance(self) -> bool:
        return self.accuracy_ci95[0] > 0.5


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def diagnose(
    chosen_scores: Sequence[float],
    rejected_scores: Sequence[float],
    chosen_lengths: Sequence[int] | None = None,
    rejected_lengths: Sequence[int] | None = None,
    sources: Sequence[str | None] | None = None,
    n_buckets: int = 4,
    tie_tolerance: float = 1e-4,
) -> Diagnostics:
    """All diagnostics from per-pair scores (same order), optional response lengths and sources."""
    n = len(chosen_scores)
    if n != len(rejected_scores):
        raise ValueError(f"{n} chosen scores but {len(rejected_scores)} rejected scores")
    if n == 0:
        raise ValueError("no pairs to diagnose")
    margins = [float(c) - float(r) for c, r in zip(chosen_scores, rejected_scores, strict=True)]
    ties = [abs(m) < tie_tolerance for m in margins]
    credit = [0.5 if tie else (1.0 if m > 0 else 0.0) for m, tie in zip(margins, ties, strict=True)]
    correct = sum(credit)
    report = Diagnostics(
        n_pairs=n,
        accuracy=correct / n,
        accuracy_ci95=wilson_interval(correct, n),
        tie_fraction=sum(ties) / n,
        mean_margin=sum(margins) / n,
    )

    if sources is not None:
        groups: dict[str, list[float]] = {}
        for source, value in zip(sources, credit, strict=True):
            groups.setdefault(source or "unknown", []).append(value)
        if len(groups) > 1 or "unknown" not in groups:
            for source, values in sorted(groups.items()):
                report.by_source[source] = {
                    "n": len(values),
                    "accuracy": sum(values) / len(values),
                    "accuracy_ci95": list(wilson_interval(sum(values), len(values))),
                }

    # Calibration: equal-count buckets of |margin|, least confident first.
    order = sorted(range(n), key=lambda i: abs(margins[i]))
    buckets = max(1, min(n_buckets, n))
    for b in range(buckets):
        members = order[b * n // buckets : (b + 1) * n // buckets]
        if not members:
            continue
        values = [credit[i] for i in members]
        report.calibration.append(
            {
                "bucket": b,
                "abs_margin_min": abs(margins[members[0]]),
                "abs_margin_max": abs(margins[members[-1]]),
                "n": len(members),
                "accuracy": sum(values) / len(values),
            }
        )

    if chosen_lengths is not None and rejected_lengths is not None:
        all_scores = [float(s) for s in chosen_scores] + [float(s) for s in rejected_scores]
        all_lengths = [float(x) for x in chosen_lengths] + [float(x) for x in rejected_lengths]
        report.length_pearson = pearson(all_lengths, all_scores)
        report.length_spearman = spearman(all_lengths, all_scores)
        differing = [i for i in range(n) if chosen_lengths[i] != rejected_lengths[i]]
        if differing:
            longer_wins = sum(
                1.0
                for i in differing
                if (margins[i] > 0) == (chosen_lengths[i] > rejected_lengths[i]) and not ties[i]
            )
            report.prefers_longer = longer_wins / len(differing)
            report.chosen_is_longer = sum(
                1.0 for i in differing if chosen_lengths[i] > rejected_lengths[i]
            ) / len(differing)

    if not report.above_chance():
        report.warnings.append(
            f"accuracy {report.accuracy:.3f} is not above chance: its 95% interval "
            f"[{report.accuracy_ci95[0]:.3f}, {report.accuracy_ci95[1]:.3f}] includes 0.5"
        )
    if report.tie_fraction > 0.1:
        report.warnings.append(
            f"{report.tie_fraction:.1%} of pairs are ties: the RM barely separates responses"
        )
    if math.isfinite(report.length_spearman) and abs(report.length_spearman) > 0.5:
        report.warnings.append(
            f"reward correlates with length (Spearman {report.length_spearman:+.2f}): "
            "a policy can gain reward by changing length alone"
        )
    if len(report.calibration) > 1 and report.calibration[-1]["accuracy"] < report.calibration[0]["accuracy"]:
        report.warnings.append(
            "confident pairs are less accurate than unconfident ones: the margins are miscalibrated"
        )
    return report


def to_markdown(report: Diagnostics, title: str = "Reward model diagnostics") -> str:
    lo, hi = report.accuracy_ci95
    lines = [
        f"# {title}",
        "",
        f"- pairs: {report.n_pairs}",
        f"- pairwise accuracy: **{report.accuracy:.3f}** (95% CI {lo:.3f}-{hi:.3f}); "
        f"{'above chance' if report.above_chance() else 'NOT above chance'}",
        f"- ties: {report.tie_fraction:.1%}; mean margin {report.mean_margin:+.3f}",
    ]
    if math.isfinite(report.length_spearman):
        lines.append(
            f"- reward vs length: Spearman {report.length_spearman:+.2f}, Pearson {report.length_pearson:+.2f}; "
            f"RM prefers the longer response in {report.prefers_longer:.1%} of pairs "
            f"(labels: {report.chosen_is_longer:.1%})"
        )
    if report.by_source:
        lines += ["", "| source | n | accuracy | 95% CI |", "|---|---:|---:|---|"]
        for source, row in report.by_source.items():
            lines.append(
                f"| {source} | {row['n']} | {row['accuracy']:.3f} | "
                f"{row['accuracy_ci95'][0]:.3f}-{row['accuracy_ci95'][1]:.3f} |"
            )
    if report.calibration:
        lines += ["", "| margin bucket | abs margin | n | accuracy |", "|---:|---|---:|---:|"]
        for row in report.calibration:
            lines.append(
                f"| {row['bucket']} | {row['abs_margin_min']:.3g}-{row['abs_margin_max']:.3g} | {row['n']} | "
                f"{row['accuracy']:.3f} |"
            )
    if report.warnings:
        lines += ["", "Warnings:"] + [f"- {w}" for w in report.warnings]
    return "\n".join(lines) + "\n"
