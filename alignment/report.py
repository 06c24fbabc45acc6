"""The comparison report: per-arm table (mean and 95% CI over seeds), paired comparisons (alignment.statistics:
per-prompt differences with bootstrap intervals over prompts and seeds, exact tests for a binary gold reward, Holm's
correction across the report's comparisons), gold at equal KL, Gao et al. (2022)'s over-optimisation fits, plots,
a summary computed from them, and what reproduces it.

Plots are PNG files that carry the numbers they draw in a `series` text chunk (JSON), so that a test, or a reader
with `PIL.Image.open(path).text["series"]`, gets back exactly what is on the figure:
- frontier.png: gold score vs KL to the SFT policy, one curve per arm (the DPO paper's Figure 2);
- overoptimisation.png: proxy-RM score and gold score vs KL, side by side, with Gao et al. (2022)'s fitted curves
  and the fitted gold peak where there is one: a proxy that keeps rising while the gold score falls is
  over-optimised;
- training_curves.png: training loss (and the RL arms' reward) per step, mean over seeds.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from alignment.statistics import analyse

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


# ------------------------------------------------------------------------------------------------------- summary
def _overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two 95% intervals overlap (an unknown interval counts as overlapping: nothing is claimed)."""
    if math.isnan(a["ci95"]) or math.isnan(b["ci95"]):
        return True
    return abs(a["mean"] - b["mean"]) <= a["ci95"] + b["ci95"]


def _overlap_lines(rows: list[dict[str, Any]], per_arm: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The best arm against SFT and each arm's best setting against it, by overlap of 95% intervals over seeds
    (what the report can say without per-prompt scores)."""
    sft = rows[0]
    arms = [row for row in rows[1:] if "gold" in row]
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
    lines = [
        f"Highest gold score: {best['arm']} ({best['setting']}){also}, {_fmt(best['gold'])}{kl}; {verdict}."
    ]
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
    return lines


def _verdict(item: dict[str, Any]) -> str:
    """A paired comparison in words: its interval, test, Holm-adjusted p and, when not significant, the smallest
    difference this many prompts (and seeds) would detect."""
    over = "prompts and seeds" if item["resampled"] == "seeds and prompts" else "prompts"
    text = (
        f"paired difference {_interval(item)} (95% bootstrap interval over {over}; {item['test']}, "
        f"Holm-adjusted p = {item['p_holm']:.3g})"
    )
    if item["significant"]:
        return f"{text}: significant"
    if math.isnan(item["minimum_detectable_effect"]):
        return f"{text}: not significant; the difference is the same on every prompt, so no detectable effect is estimable"
    return (
        f"{text}: not significant; at this n a difference of {item['minimum_detectable_effect']:.3f} would be "
        "detected with 80% power"
    )


def _detectable(item: dict[str, Any]) -> str:
    effect = item["minimum_detectable_effect"]
    return "no variation over prompts" if math.isnan(effect) else f"detectable: {effect:.3f}"


def _against_sft(analysis: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """Each (arm, setting)'s paired comparison with the SFT policy."""
    return {
        (c["policy"]["arm"], c["policy"]["setting"]): c
        for c in analysis["comparisons"]
        if c["kind"] == "vs_sft"
    }


def _paired_lines(rows: list[dict[str, Any]], analysis: dict[str, Any]) -> list[str]:
    """The best arm against SFT, each other arm's best setting against it, and the list of what is significant."""
    sft = rows[0]
    arms = [row for row in rows[1:] if "gold" in row]
    best = max(arms, key=lambda r: r["gold"]["mean"])
    kl = f" at KL {best['kl']['mean']:.2f}" if "kl" in best else ""
    tied = [
        f"{r['arm']} ({r['setting']})"
        for r in arms
        if r is not best and r["gold"]["mean"] == best["gold"]["mean"]
    ]
    also = f" (equalled by {', '.join(tied)})" if tied else ""
    against = _against_sft(analysis).get((best["arm"], best["setting"]))
    if against is None:
        verdict = "no paired comparison with the SFT policy (no seed in common)"
    elif against["significant"]:
        side = "above" if against["mean"] > 0 else "below"
        verdict = f"{side} the SFT policy's {sft['gold']['mean']:.3f}: {_verdict(against)}"
    else:
        verdict = (
            f"against the SFT policy, {_verdict(against)}, so this comparison does not show a gain over SFT"
        )
    lines = [
        f"Highest gold score: {best['arm']} ({best['setting']}){also}, {_fmt(best['gold'])}{kl}; {verdict}."
    ]
    key = {"arm": best["arm"], "setting": best["setting"]}
    for item in analysis["comparisons"]:
        if item["kind"] != "vs_best" or item["other"] != key:
            continue
        arm, setting = item["policy"]["arm"], item["policy"]["setting"]
        top = next(r for r in arms if r["arm"] == arm and r["setting"] == setting)
        if item["significant"]:
            relation = f"{'below' if item['mean'] < 0 else 'above'} the best arm: {_verdict(item)}"
        else:
            relation = f"not separable from the best arm: {_verdict(item)}"
        lines.append(
            f"{arm}'s best setting ({setting}) reaches gold {_fmt(top['gold'])}"
            + (f" at KL {top['kl']['mean']:.2f}" if "kl" in top else "")
            + f"; {relation}."
        )
    comparisons = analysis["comparisons"]
    significant = [c["name"] for c in comparisons if c["significant"]]
    other = [f"{c['name']} ({_detectable(c)})" for c in comparisons if not c["significant"]]
    lines.append(
        f"Of the {len(comparisons)} paired comparisons of gold (Holm-corrected together, alpha "
        f"{analysis['alpha']}), significant: {', '.join(significant) or 'none'}; not significant: "
        f"{', '.join(other) or 'none'}."
    )
    return lines


def _curve_lines(analysis: dict[str, Any]) -> list[str]:
    """Gold at the largest common KL, and each fitted gold peak (best-of-n and the RL arms)."""
    lines = []
    equal = analysis.get("equal_kl")
    if equal:
        last = equal["values"][-1]
        golds = ", ".join(
            f"{arm} {g['mean']:.3f} [{g['ci_low']:.3f}, {g['ci_high']:.3f}]"
            for arm, g in last["gold"].items()
        )
        leader = last["leader"]
        if last["ahead"]:
            versus = "; ".join(
                f"ahead of {arm} by {v['difference']:+.3f} [{v['ci_low']:+.3f}, {v['ci_high']:+.3f}]"
                for arm, v in last["leader_vs"].items()
            )
            who = f"{leader} is {versus}"
        else:
            close = [arm for arm, v in last["leader_vs"].items() if not v["ci_low"] > 0]
            who = f"{leader} is highest but not separable from {', '.join(close)}"
        lines.append(
            f"At equal KL {last['kl']:.2f} (the largest every fitted arm reached; fitted curves, 95% bootstrap "
            f"intervals): {golds}; {who}."
        )
    for arm, reason in analysis.get("skipped", {}).items():
        lines.append(f"{arm}: no gold-vs-KL curve ({reason}).")
    for arm, fit in analysis.get("fits", {}).items():
        if fit["stage"] not in OPTIMISERS:
            continue
        peak = fit["gold_peak"]
        if math.isnan(peak["kl"]):
            lines.append(
                f"{arm}: Gao et al.'s {fit['form']} form fitted to the gold score has no peak up to KL "
                f"{fit['kl_range'][1]:.2f}: no over-optimisation in this range."
            )
            continue
        if not peak["inside"]:
            consequence = ": no over-optimisation is shown in the range measured"
        elif peak.get("proxy_still_rising"):
            consequence = ": the fitted proxy still rises there, so past it the proxy is over-optimised"
        else:
            consequence = ""
        lines.append(
            f"{arm}: Gao et al.'s {fit['form']} form puts the gold peak at KL {peak['kl']:.3g} "
            f"[{peak['ci_low']:.3g}, {peak['ci_high']:.3g}] ("
            + (f"gold {peak['gold']:.3f} there; " if peak["inside"] else "")
            + f"a peak in {peak['share_with_peak']:.0%} of bootstrap fits), {peak['where']}{consequence}."
        )
    return lines


OPTIMISERS = ("best_of_n", "ppo", "grpo", "rloo")
"""The stages that optimise the proxy RM directly: Gao et al.'s over-optimisation fits are reported for these."""


def summary_lines(rows: list[dict[str, Any]], analysis: dict[str, Any] | None = None) -> list[str]:
    """Plain-words findings, each computed from the table; nothing the numbers do not show. With `analysis`
    (alignment.statistics.analyse), arms are compared by paired differences, Holm-corrected; without it (no
    per-prompt scores), by whether their intervals over seeds overlap."""
    sft = rows[0]
    arms = [row for row in rows[1:] if "gold" in row]
    if not arms or "gold" not in sft:
        return ["No gold reward was measured, so no arm can be called better on the task itself."]
    per_arm: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in arms:
        per_arm[row["arm"]].append(row)
    if analysis is not None:
        lines = _paired_lines(rows, analysis)
    else:
        lines = _overlap_lines(rows, per_arm)
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
    if analysis is not None:
        lines += _curve_lines(analysis)
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


def _draw(
    axes: Any, series: dict[str, list[dict[str, float]]], x: str, y: str, ylabel: str
) -> dict[str, str]:
    """Each arm's points with their 95% intervals; returns each arm's colour (its fitted curve takes the same)."""
    colours = {}
    for arm, points in series.items():
        errors = [[0.0 if math.isnan(p[f"{k}_ci95"]) else p[f"{k}_ci95"] for p in points] for k in (x, y)]
        drawn = axes.errorbar(
            [p[x] for p in points],
            [p[y] for p in points],
            xerr=errors[0],
            yerr=errors[1],
            marker="o",
            capsize=3,
            label=arm,
        )
        colours[arm] = drawn.lines[0].get_color()
    axes.set_xlabel("KL(policy || SFT), nats per response")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return colours


def _draw_fits(
    axes: Any, fits: dict[str, Any], key: str, colours: dict[str, str], peaks: bool = False
) -> None:
    """Fitted curves (dashed, the arm's colour) and, with `peaks`, each fitted gold peak (a star)."""
    for arm, fit in fits.items():
        if key not in fit["curve"]:
            continue
        colour = colours.get(arm)
        axes.plot(fit["curve"]["kl"], fit["curve"][key], linestyle="--", linewidth=1, color=colour)
        peak = fit["gold_peak"]
        if peaks and not math.isnan(peak["kl"]) and peak["kl"] <= fit["curve"]["kl"][-1]:
            axes.plot([peak["kl"]], [peak["gold"]], marker="*", markersize=12, color=colour)
            axes.axvline(peak["kl"], linestyle=":", linewidth=1, color=colour)


def _fit_series(fits: dict[str, Any]) -> dict[str, Any]:
    """What a figure carries of the fits: form, parameters, curve, gold peak."""
    keep = ("form", "stage", "gold", "proxy", "curve", "gold_peak", "kl_range")
    return {arm: {k: fit[k] for k in keep if k in fit} for arm, fit in fits.items()}


def plot_frontier(
    rows: list[dict[str, Any]], path: Path, fits: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Gold vs KL per arm; with `fits` (alignment.statistics), each arm's fitted gold curve, dashed."""
    plt = _pyplot()
    series: dict[str, Any] = _by_arm(rows, "kl", "gold")
    figure, axes = plt.subplots(figsize=(6, 4.5))
    colours = _draw(axes, series, "kl", "gold", "gold score (held-out prompts)")
    axes.set_title("gold score vs KL: the reward-KL frontier")
    if fits:
        _draw_fits(axes, fits, "gold", colours)
        series = {**series, "fits": _fit_series(fits)}
    _save(figure, path, series)
    plt.close(figure)
    return series


def plot_overoptimisation(
    rows: list[dict[str, Any]], path: Path, fits: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Proxy and gold score vs KL side by side; with `fits`, Gao et al. (2022)'s fitted curves of the arms that
    optimise the proxy (best-of-n, PPO, GRPO, RLOO), and each fitted gold peak."""
    plt = _pyplot()
    series: dict[str, Any] = {"proxy": _by_arm(rows, "kl", "rm_score"), "gold": _by_arm(rows, "kl", "gold")}
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    proxy_colours = _draw(left, series["proxy"], "kl", "rm_score", "proxy RM score")
    left.set_title("proxy reward vs KL")
    gold_colours = _draw(right, series["gold"], "kl", "gold", "gold score")
    right.set_title("gold reward vs KL")
    if fits is not None:
        shown = {arm: fit for arm, fit in fits.items() if fit["stage"] in OPTIMISERS}
        _draw_fits(left, shown, "proxy", proxy_colours)
        _draw_fits(right, shown, "gold", gold_colours, peaks=True)
        if shown:
            left.set_title("proxy reward vs KL (dashed: Gao et al. 2022 fits)")
            right.set_title("gold reward vs KL (star: fitted peak)")
        series["fits"] = _fit_series(shown)
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


# ------------------------------------------------------------------------------------------- report sections
def _p(value: float) -> str:
    return f"{value:.3g}"


def statistics_sections(analysis: dict[str, Any]) -> list[str]:
    """report.md's sections on the paired comparisons, gold at equal KL and the over-optimisation fits."""
    comparisons = analysis["comparisons"]
    binary = analysis["binary_gold"]
    test = (
        "the exact sign test over prompts on each prompt's difference (McNemar's exact test where each prompt has "
        "one pair)"
        if binary
        else "the bootstrap's two-sided p-value"
    )
    lines = [
        "## Paired comparisons",
        "",
        "Every policy answers the same prompts with the same sampling seed, so two policies are compared prompt by "
        "prompt: the difference of their gold scores on each prompt (its samples averaged first), averaged over "
        "prompts and seeds. Its 95% interval is a percentile bootstrap that redraws the prompts and, with several "
        f"seeds, the seeds as well ({analysis['replicates']} replicates). Test: {test}. The p-values of the "
        f"{len(comparisons)} comparisons below are Holm-adjusted together; a difference is significant when the "
        f"adjusted p is below {analysis['alpha']} and the interval excludes 0. For the others, `detectable` is the "
        "difference that would be found with 80% power at Holm's strictest level (alpha / number of comparisons), "
        "from the bootstrap's standard error. The best setting is chosen on these same prompts, which favours it "
        "slightly in its own comparisons.",
        "",
        "| comparison | seeds | prompts | difference [95% CI] | test | p | Holm p | verdict |"
        + (" prompts better / worse / tied |" if binary else ""),
        "|" + "---|" * (9 if binary else 8),
    ]
    for c in comparisons:
        verdict = "significant" if c["significant"] else f"not significant ({_detectable(c)})"
        cells = [
            c["name"],
            ", ".join(str(s) for s in c["seed_values"]),
            str(c["prompts"]),
            _interval(c),
            c["test"],
            _p(c["p_value"]),
            _p(c["p_holm"]),
            verdict,
        ]
        if binary:
            cells.append(
                f"{c.get('prompts_better', '-')} / {c.get('prompts_worse', '-')} / {c.get('prompts_tied', '-')}"
            )
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Gold at equal KL",
        "",
        "Which method gets more gold reward for the same KL? Each arm's gold gain over the SFT policy is fitted "
        "against d = sqrt(KL) over its settings and seeds with Gao et al. (2022)'s form: best-of-n "
        "R(d) = d (a - b d), every trained arm the RL form R(d) = d (a - b log d) (PPO, GRPO, RLOO; DPO has no "
        "published form and takes the RL one), both 0 at the SFT policy. Below: each arm's fitted gold at common KL "
        "values up to the largest KL every fitted arm reached, with 95% bootstrap intervals (prompts and seeds "
        "redrawn for all arms together, so the arms stay paired). An arm is ahead where its difference to every "
        "other arm has an interval above 0; these intervals are not corrected for the number of KL values.",
        "",
    ]
    for arm, reason in analysis["skipped"].items():
        lines.append(f"- {arm}: no curve ({reason}).")
    if analysis["skipped"]:
        lines.append("")
    equal = analysis["equal_kl"]
    if equal is None:
        lines += ["Fewer than two arms have a fitted curve: no equal-KL comparison.", ""]
    else:
        arms = list(equal["values"][0]["gold"])
        lines += [
            "| KL | " + " | ".join(arms) + " | ahead |",
            "|" + "---|" * (len(arms) + 2),
        ]
        for value in equal["values"]:
            golds = [
                f"{value['gold'][a]['mean']:.3f} [{value['gold'][a]['ci_low']:.3f}, {value['gold'][a]['ci_high']:.3f}]"
                for a in arms
            ]
            if value["ahead"]:
                ahead = value["leader"]
            else:
                close = [a for a, v in value["leader_vs"].items() if not v["ci_low"] > 0]
                ahead = f"none separable ({value['leader']} highest; not separable from {', '.join(close)})"
            lines.append(f"| {value['kl']:.3f} | " + " | ".join(golds) + f" | {ahead} |")
        lines.append("")
    optimisers = {arm: fit for arm, fit in analysis["fits"].items() if fit["stage"] in OPTIMISERS}
    lines += [
        "## Over-optimisation (Gao et al. 2022)",
        "",
        "For the arms that optimise the proxy RM (best-of-n, PPO, GRPO, RLOO), the proxy and gold gains over the "
        "SFT policy are fitted with the same forms; where the fitted gold curve peaks (KL = d*^2; best-of-n "
        "d* = a / 2b, RL d* = exp(a/b - 1)) is the over-optimisation point: past it, more KL lowers the gold score. "
        "A peak beyond the largest KL measured is an extrapolation. Curves: overoptimisation.png.",
        "",
    ]
    if not optimisers:
        lines += ["No best-of-n or RL arm has two settings or more: nothing to fit.", ""]
        return lines
    lines += [
        "| arm | form | proxy a, b | gold a, b | KL measured | gold peak: KL [95% CI] | where |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, fit in optimisers.items():
        proxy = f"{fit['proxy']['a']:.3f}, {fit['proxy']['b']:.3f}" if "proxy" in fit else "-"
        peak = fit["gold_peak"]
        at = (
            "-"
            if math.isnan(peak["kl"])
            else f"{peak['kl']:.3g} [{peak['ci_low']:.3g}, {peak['ci_high']:.3g}] ({peak['share_with_peak']:.0%} of fits peak)"
        )
        rising = peak["inside"] and peak.get("proxy_still_rising")
        where = peak["where"] + ("; proxy still rising there" if rising else "")
        lines.append(
            f"| {arm} | {fit['form']} | {proxy} | {fit['gold']['a']:.3f}, {fit['gold']['b']:.3f} | "
            f"{fit['kl_range'][0]:.2f} to {fit['kl_range'][1]:.2f} | {at} | {where} |"
        )
    return [*lines, ""]


def reproduce_section(provenance: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """report.md's last section: what produced it and the command that produces it again."""
    dirty = provenance.get("uncommitted_changes")
    engine = provenance.get("evaluation_engine", {})
    lines = [
        "## Reproduce",
        "",
        f"- Command: `{provenance['command']}` (finished arms and evaluations are reused; remove the output "
        "folder to run everything again).",
        f"- Code version: `{provenance['code_version']}`"
        + (" (with uncommitted changes: the code differed from that commit)" if dirty else "")
        + ".",
        f"- Comparison config hash: `{provenance['compare_config_hash']}` (sha256 of the resolved comparison "
        f"config); pipeline `{config['pipeline']}`.",
        f"- Seeds: {config['seeds']} (each training seed is also its policies' evaluation sampling seed).",
        f"- Evaluation engine: {engine.get('backend')}, {engine.get('dtype')}"
        + (f", on {engine['device']}" if engine.get("device") else "")
        + ".",
        "- `compare.json` holds every per-prompt score: `results[*].scores` and `reference_scores` (per seed) as "
        "columns prompt_index, sample, gold, rm, kl; `prompts` maps prompt_index to the prompt's id; `analysis` "
        "holds the paired statistics and fits.",
        "",
        "| artifact | stage | config hash | code version | precision |",
        "|---|---|---|---|---|",
    ]
    for item in provenance.get("artifacts", []):
        precision = item.get("precision") or {}
        shown = ", ".join(f"{k} {v}" for k, v in precision.items()) or "-"
        lines.append(
            f"| `{item['path']}` | {item.get('stage')} | `{item.get('config_hash')}` | "
            f"`{item.get('code_version')}` | {shown} |"
        )
    return [*lines, ""]


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
    provenance: dict[str, Any] | None = None,
    prompts: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """report.md, compare.json and the plots under `output`; the same in the W&B group. Returns the rich table.
    `failed`: arms that did not train (arm, label, seed, reason, log), listed in the report apart from the table.
    With per-prompt `scores` in `reference` (per seed) and in every result, the arms are compared by paired
    statistics (alignment.statistics). `provenance`: what reproduces the report (code version, command, config
    hashes, engine and precision); `prompts`: the evaluation prompts' ids, which the scores' prompt_index points
    into."""
    failed = failed or []
    from alignment.artifacts import write_json_atomic
    from alignment.tracking import log_results

    rows = aggregate(reference, results)
    analysis = None
    if reference.get("scores") and all(r.get("scores") for r in results):
        analysis = analyse(reference["scores"], results)
    if analysis is not None:  # each row's paired comparison with the SFT policy, for the table
        against_sft = _against_sft(analysis)
        for row in rows[1:]:
            if (row["arm"], row["setting"]) in against_sft:
                row["vs_sft"] = against_sft[(row["arm"], row["setting"])]
    fits = analysis["fits"] if analysis is not None else None
    plots = {
        "frontier": output / "frontier.png",
        "overoptimisation": output / "overoptimisation.png",
        "training_curves": output / "training_curves.png",
    }
    plot_frontier(rows, plots["frontier"], fits)
    plot_overoptimisation(rows, plots["overoptimisation"], fits)
    plot_training_curves(rows, plots["training_curves"])
    lines = summary_lines(rows, analysis)
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
        *(statistics_sections(analysis) if analysis is not None else []),
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
        *(reproduce_section(provenance, config) if provenance is not None else []),
    ]
    (output / "report.md").write_text("\n".join(text))
    write_json_atomic(
        output / "compare.json",
        {
            "config": config,
            "wandb_group": group,
            "rows": [{k: v for k, v in row.items() if k != "curves"} for row in rows],
            "results": [{k: v for k, v in r.items() if k != "curve"} for r in results],
            "reference_scores": reference.get("scores"),
            "prompts": prompts,
            "analysis": analysis,
            "provenance": provenance,
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
