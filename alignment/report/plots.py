"""The report's figures: PNG files that carry the numbers they draw in a `series` text chunk (JSON)."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from alignment.report.summary import OPTIMISERS


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
