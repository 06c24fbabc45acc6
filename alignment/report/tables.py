"""The comparison's rows, one per arm and setting (each figure's mean and 95% interval over seeds), and the arms
table in markdown (report.md) and rich (the terminal)."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

# Two-sided 95% quantiles of Student's t by degrees of freedom: CIs over a handful of seeds.
T_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}

FIGURES = {
    "gold": ("gold", "mean"),
    "rm_score": ("rm_score", "mean"),
    "kl": ("kl", "mean"),
    "win_rate_gold": ("win_rate_gold", "win_rate"),
    "tie_rate_gold": ("win_rate_gold", "tie_rate"),
    "win_rate_rm": ("win_rate_rm", "win_rate"),
    "length": ("length", "mean"),
    "eos_rate": ("eos_rate", None),
}


def seed_interval(values: list[float]) -> tuple[float, float]:
    """Mean and 95% half-width over seeds (Student t; NaN for one seed)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, T_95.get(n - 1, 1.96) * sd / math.sqrt(n)


def _figure(metrics: dict[str, Any], name: str) -> tuple[float, float] | None:
    """(value, within-run 95% half-width) of one figure of an evaluation, or None when it was not measured."""
    key, field = FIGURES[name]
    item = metrics.get(key)
    if item is None:
        return None
    if field is None:
        return float(item), float("nan")
    half = item.get("ci95_half_width", float("nan")) if field in ("mean", "win_rate") else float("nan")
    return float(item[field]), float(half)


def aggregate(reference: dict[str, Any], results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per arm and setting (and one for the SFT policy): each figure's mean and CI over seeds; with a
    single seed, the CI is the evaluation's own (over prompts) and says so."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        label = ",".join(f"{k}={v}" for k, v in result["setting"].items()) or "default"
        groups[(result["arm"], label)].append(result)
    sft = [
        {"arm": "sft", "stage": "sft", "setting": {}, "seed": seed, "metrics": metrics}
        | {"wall_time_s": reference.get("wall_time_s"), "num_tokens": reference.get("num_tokens")}
        for seed, metrics in reference["metrics"].items()
    ]
    rows = []
    for (arm, label), members in [(("sft", "-"), sft), *groups.items()]:
        row: dict[str, Any] = {
            "arm": arm,
            "setting": label,
            "stage": members[0]["stage"],
            "seeds": len(members),
        }
        for name in FIGURES:
            measured = [_figure(m["metrics"], name) for m in members]
            if any(v is None for v in measured):
                continue
            values = [v[0] for v in measured]  # type: ignore[index]
            mean, half = seed_interval(values)
            if len(values) == 1:
                half = measured[0][1]  # type: ignore[index]
            row[name] = {
                "mean": mean,
                "ci95": half,
                "per_seed": values,
                "over": "seeds" if len(values) > 1 else "prompts",
            }
        for name in ("wall_time_s", "num_tokens"):
            values = [m.get(name) for m in members]
            row[name] = sum(values) / len(values) if all(v is not None for v in values) else None
        row["curves"] = [m.get("curve", []) for m in members]
        rows.append(row)
    return rows


def _fmt(item: dict[str, Any] | None, digits: int = 3) -> str:
    if not item:
        return "-"
    half = item["ci95"]
    return f"{item['mean']:.{digits}f}" + ("" if math.isnan(half) else f" ± {half:.{digits}f}")


def _interval(item: dict[str, Any], digits: int = 3) -> str:
    """A paired difference and its bootstrap interval: `+0.120 [+0.050, +0.190]`."""
    return f"{item['mean']:+.{digits}f} [{item['ci_low']:+.{digits}f}, {item['ci_high']:+.{digits}f}]"


def _holm_cell(item: dict[str, Any]) -> str:
    return f"{item['p_holm']:.3g}" + (" *" if item["significant"] else "")


COLUMNS = [
    ("arm", lambda r: r["arm"]),
    ("setting", lambda r: r["setting"]),
    ("seeds", lambda r: str(r["seeds"])),
    ("gold", lambda r: _fmt(r.get("gold"))),
    ("gold - SFT, paired (95% CI)", lambda r: _interval(r["vs_sft"]) if r.get("vs_sft") else "-"),
    ("Holm p", lambda r: _holm_cell(r["vs_sft"]) if r.get("vs_sft") else "-"),
    ("RM score", lambda r: _fmt(r.get("rm_score"))),
    ("KL to SFT", lambda r: _fmt(r.get("kl"), 2)),
    ("win vs SFT (gold)", lambda r: _fmt(r.get("win_rate_gold"), 2)),
    ("ties (gold)", lambda r: _fmt(r.get("tie_rate_gold"), 2)),
    ("win vs SFT (RM)", lambda r: _fmt(r.get("win_rate_rm"), 2)),
    ("length", lambda r: _fmt(r.get("length"), 1)),
    ("wall time (s)", lambda r: "-" if r["wall_time_s"] is None else f"{r['wall_time_s']:.0f}"),
    ("tokens", lambda r: "-" if r["num_tokens"] is None else f"{r['num_tokens']:,.0f}"),
]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(name for name, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row) for _, cell in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def rich_table(rows: list[dict[str, Any]], title: str) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for name, _ in COLUMNS[:11]:
        table.add_column(name)
    for row in rows:
        table.add_row(*(cell(row) for _, cell in COLUMNS[:11]))
    return table
