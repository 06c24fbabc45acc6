"""The comparison report: per-arm table (mean and 95% CI over seeds), plots, and a summary computed from them.

Plots are PNG files that carry the numbers they draw in a `series` text chunk (JSON), so that a test, or a reader
with `PIL.Image.open(path).text["series"]`, gets back exactly what is on the figure:
- frontier.png: gold score vs KL to the SFT policy, one curve per arm (the DPO paper's Figure 2);
- overoptimisation.png: proxy-RM score and gold score vs KL, side by side (Gao et al. 2022): a proxy that keeps
  rising while the gold score falls is over-optimised;
- training_curves.png: training loss (and the RL arms' reward) per step, mean over seeds.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
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


COLUMNS = [
    ("arm", lambda r: r["arm"]),
    ("setting", lambda r: r["setting"]),
    ("seeds", lambda r: str(r["seeds"])),
    ("gold", lambda r: _fmt(r.get("gold"))),
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
    for name, _ in COLUMNS[:9]:
        table.add_column(name)
    for row in rows:
        table.add_row(*(cell(row) for _, cell in COLUMNS[:9]))
    return table


# ------------------------------------------------------------------------------------------------------- summary
def _overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two 95% intervals overlap (an unknown interval counts as overlapping: nothing is claimed)."""
    if math.isnan(a["ci95"]) or math.isnan(b["ci95"]):
        return True
    return abs(a["mean"] - b["mean"]) <= a["ci95"] + b["ci95"]


def summary_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Plain-words findings, each computed from the table; nothing the numbers do not show."""
    sft = rows[0]
    arms = [row for row in rows[1:] if "gold" in row]
    lines: list[str] = []
    if not arms or "gold" not in sft:
        return ["No gold reward was measured, so no arm can be called better on the task itself."]
    best = max(arms, key=lambda r: r["gold"]["mean"])
    verdict = (
        "its interval and the SFT policy's overlap, so this comparison does not show a gain over SFT"
        if _overlap(best["gold"], sft["gold"])
        else f"{'above' if best['gold']['mean'] > sft['gold']['mean'] else 'below'} the SFT policy's "
        f"{sft['gold']['mean']:.3f} with non-overlapping 95% intervals"
    )
    kl = f" at KL {best['kl']['mean']:.2f}" if "kl" in best else ""
    tied = [
        f"{r['arm']} ({r['setting']})"
        for r in arms
        if r is not best and r["gold"]["mean"] == best["gold"]["mean"]
    ]
    also = f" (equalled by {', '.join(tied)})" if tied else ""
    lines.append(
        f"Highest gold score: {best['arm']} ({best['setting']}){also}, {_fmt(best['gold'])}{kl}; {verdict}."
    )
    per_arm: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in arms:
        per_arm[row["arm"]].append(row)
    for arm, members in per_arm.items():
        top = max(members, key=lambda r: r["gold"]["mean"])
        if top is best:
            continue
        relation = "not separable from" if _overlap(top["gold"], best["gold"]) else "below"
        lines.append(
            f"{arm}'s best setting ({top['setting']}) reaches gold {_fmt(top['gold'])}"
            + (f" at KL {top['kl']['mean']:.2f}" if "kl" in top else "")
            + f": {relation} the best arm."
        )
    for arm, members in per_arm.items():
        measured = sorted(
            (r for r in members if "kl" in r and "rm_score" in r), key=lambda r: r["kl"]["mean"]
        )
        if len(measured) < 2:
            continue
        low, high = measured[0], measured[-1]
        proxy = high["rm_score"]["mean"] - low["rm_score"]["mean"]
        gold = high["gold"]["mean"] - low["gold"]["mean"]
        span = f"as KL grows from {low['kl']['mean']:.2f} to {high['kl']['mean']:.2f}"
        if proxy > 0 and gold < 0 and not _overlap(high["gold"], low["gold"]):
            lines.append(
                f"{arm}: the proxy RM score rises by {proxy:.3f} while the gold score falls by {-gold:.3f} {span}: "
                "the proxy is over-optimised in this range."
            )
        elif proxy > 0 and gold < 0:
            lines.append(
                f"{arm}: the proxy RM score rises by {proxy:.3f} and the gold score moves by {gold:+.3f} {span}, "
                "within its uncertainty: a possible start of over-optimisation, not shown by these seeds."
            )
        else:
            lines.append(f"{arm}: proxy RM score {proxy:+.3f} and gold score {gold:+.3f} {span}.")
    for row in arms:
        if "win_rate_gold" in row:
            lines.append(
                f"{row['arm']} ({row['setting']}) beats the SFT policy's response on "
                f"{row['win_rate_gold']['mean']:.0%} of prompts by the gold reward"
                + (f" (ties {row['tie_rate_gold']['mean']:.0%})" if "tie_rate_gold" in row else "")
                + (f" and on {row['win_rate_rm']['mean']:.0%} by the RM." if "win_rate_rm" in row else ".")
            )
    return lines


# --------------------------------------------------------------------------------------------------------- plots
def _save(figure: Any, path: Path, series: dict[str, Any]) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=110, metadata={"series": json.dumps(series)})


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _by_arm(rows: list[dict[str, Any]], x: str, y: str) -> dict[str, list[dict[str, float]]]:
    series: dict[str, list[dict[str, float]]] = defaultdict(list)
    for row in rows:
        if x in row and y in row:
            point = {
                "setting": row["setting"],
                x: row[x]["mean"],
                f"{x}_ci95": row[x]["ci95"],
                y: row[y]["mean"],
                f"{y}_ci95": row[y]["ci95"],
            }
            series[row["arm"]].append(point)
    for points in series.values():
        points.sort(key=lambda p: p[x])
    return dict(series)


def _draw(axes: Any, series: dict[str, list[dict[str, float]]], x: str, y: str, ylabel: str) -> None:
    for arm, points in series.items():
        errors = [[0.0 if math.isnan(p[f"{k}_ci95"]) else p[f"{k}_ci95"] for p in points] for k in (x, y)]
        axes.errorbar(
            [p[x] for p in points],
            [p[y] for p in points],
            xerr=errors[0],
            yerr=errors[1],
            marker="o",
            capsize=3,
            label=arm,
        )
    axes.set_xlabel("KL(policy || SFT), nats per response")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)


def plot_frontier(rows: list[dict[str, Any]], path: Path) -> dict[str, Any]:
    plt = _pyplot()
    series = _by_arm(rows, "kl", "gold")
    figure, axes = plt.subplots(figsize=(6, 4.5))
    _draw(axes, series, "kl", "gold", "gold score (held-out prompts)")
    axes.set_title("gold score vs KL: the reward-KL frontier")
    _save(figure, path, series)
    plt.close(figure)
    return series


def plot_overoptimisation(rows: list[dict[str, Any]], path: Path) -> dict[str, Any]:
    plt = _pyplot()
    series = {"proxy": _by_arm(rows, "kl", "rm_score"), "gold": _by_arm(rows, "kl", "gold")}
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    _draw(left, series["proxy"], "kl", "rm_score", "proxy RM score")
    left.set_title("proxy reward vs KL")
    _draw(right, series["gold"], "kl", "gold", "gold score")
    right.set_title("gold reward vs KL")
    _save(figure, path, series)
    plt.close(figure)
    return series


def _mean_curve(curves: list[list[dict[str, Any]]], key: str) -> list[list[float]]:
    by_step: dict[float, list[float]] = defaultdict(list)
    for curve in curves:
        for entry in curve:
            if key in entry:
                by_step[float(entry["step"])].append(float(entry[key]))
    return [[step, sum(v) / len(v)] for step, v in sorted(by_step.items())]


REWARD_KEYS = {"ppo": "reward/score", "grpo": "reward", "rloo": "reward"}


def plot_training_curves(rows: list[dict[str, Any]], path: Path) -> dict[str, Any]:
    plt = _pyplot()
    series: dict[str, dict[str, list[list[float]]]] = {"loss": {}, "reward": {}}
    for row in rows:
        name = f"{row['arm']} {row['setting']}"
        if row["stage"] == "sft" or not any(row["curves"]):
            continue
        series["loss"][name] = _mean_curve(row["curves"], "loss")
        if row["stage"] in REWARD_KEYS:
            series["reward"][name] = _mean_curve(row["curves"], REWARD_KEYS[row["stage"]])
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    for axes, kind, label in (
        (left, "loss", "training loss"),
        (right, "reward", "training reward (RL arms)"),
    ):
        drawn = [name for name, points in series[kind].items() if points]
        for name in drawn:
            points = series[kind][name]
            axes.plot([p[0] for p in points], [p[1] for p in points], label=name)
        axes.set_xlabel("step")
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
        if drawn:
            axes.legend(fontsize=7)
    _save(figure, path, series)
    plt.close(figure)
    return series


# -------------------------------------------------------------------------------------------------------- report
def write(
    output: Path,
    *,
    config: dict[str, Any],
    group: str,
    reference: dict[str, Any],
    results: list[dict[str, Any]],
    tracking: tuple[str, str],
    failed: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """report.md, compare.json and the plots under `output`; the same in the W&B group. Returns the rich table.
    `failed`: arms that did not train (arm, label, seed, reason, log), listed in the report apart from the table."""
    failed = failed or []
    from alignment.artifacts import write_json_atomic
    from alignment.tracking import log_results

    rows = aggregate(reference, results)
    plots = {
        "frontier": output / "frontier.png",
        "overoptimisation": output / "overoptimisation.png",
        "training_curves": output / "training_curves.png",
    }
    plot_frontier(rows, plots["frontier"])
    plot_overoptimisation(rows, plots["overoptimisation"])
    plot_training_curves(rows, plots["training_curves"])
    lines = summary_lines(rows)
    evaluation = config["evaluation"]
    decoding = evaluation["decoding"]
    text = [
        f"# {config['name']}: RLHF vs DPO from one SFT policy",
        "",
        f"Pipeline `{config['pipeline']}`, seeds {config['seeds']}, W&B group `{group}`. Every policy answers the "
        f"same {evaluation['prompts']['source']} prompts (split {evaluation['prompts'].get('split')}, seed "
        f"{evaluation['prompts'].get('seed')}), {decoding['samples_per_prompt']} sample(s) per prompt at temperature "
        f"{decoding['temperature']}, at most {decoding['max_new_tokens']} new tokens; proxy RM `{evaluation['rm']}`, "
        f"gold `{evaluation['gold']}`. KL(policy || SFT) is estimated on the policy's own samples (sum of token "
        "log-ratios); best-of-n's is the analytic log n - (n - 1)/n. Figures are means with 95% intervals over seeds "
        "(Student t); with one seed, over prompts. Wall time and tokens are the arm's training stage (best-of-n "
        "trains nothing: it pays n samples per prompt at inference instead).",
        "",
        "## Summary",
        "",
        *[f"- {line}" for line in lines],
        "",
        "## Arms",
        "",
        markdown_table(rows),
        "",
        *(
            [
                "## Arms that did not train",
                "",
                "Not in the table or the plots; re-running the comparison retries them.",
                "",
                *[
                    f"- {item['arm']} {item['label']} seed {item['seed']}: {item['reason']} "
                    f"(log `{item['log']}`)"
                    for item in failed
                ],
                "",
            ]
            if failed
            else []
        ),
        "## Plots",
        "",
        "![gold vs KL](frontier.png)",
        "",
        "![proxy and gold reward vs KL](overoptimisation.png)",
        "",
        "![training curves](training_curves.png)",
        "",
    ]
    (output / "report.md").write_text("\n".join(text))
    write_json_atomic(
        output / "compare.json",
        {
            "config": config,
            "wandb_group": group,
            "rows": [{k: v for k, v in row.items() if k != "curves"} for row in rows],
            "results": [{k: v for k, v in r.items() if k != "curve"} for r in results],
            "summary": lines,
            "failed": failed,
        },
    )
    mode, project = tracking
    log_results(
        project=project,
        group=group,
        job_type="compare",
        name=f"compare-{config['name']}",
        directory=output,
        config=config,
        summary={"summary": " ".join(lines)},
        tables={"arms": [{name: cell(row) for name, cell in COLUMNS} for row in rows]},
        images=plots,
        mode=mode,
    )
    return {
        "table": rich_table(rows, f"{config['name']}: arms vs the SFT policy"),
        "rows": rows,
        "summary": lines,
    }
