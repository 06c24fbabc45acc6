"""report.md's summary: plain-words findings computed from the rows and, with per-prompt scores, from the paired
statistics (alignment.statistics); nothing the numbers do not show."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from alignment.report.tables import _fmt, _interval


def _overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two 95% intervals overlap (an unknown interval counts as overlapping: nothing is claimed)."""
    if math.isnan(a["ci95"]) or math.isnan(b["ci95"]):
        return True
    return abs(a["mean"] - b["mean"]) <= a["ci95"] + b["ci95"]


def _best_arm(arms: list[dict[str, Any]]) -> tuple[dict[str, Any], str, str]:
    """The arm with the highest mean gold, its " at KL x" text, and its " (equalled by ...)" text."""
    best = max(arms, key=lambda r: r["gold"]["mean"])
    kl = f" at KL {best['kl']['mean']:.2f}" if "kl" in best else ""
    tied = [
        f"{r['arm']} ({r['setting']})"
        for r in arms
        if r is not best and r["gold"]["mean"] == best["gold"]["mean"]
    ]
    return best, kl, f" (equalled by {', '.join(tied)})" if tied else ""


def _overlap_lines(rows: list[dict[str, Any]], per_arm: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The best arm against SFT and each arm's best setting against it, by overlap of 95% intervals over seeds
    (what the report can say without per-prompt scores)."""
    sft = rows[0]
    arms = [row for row in rows[1:] if "gold" in row]
    best, kl, also = _best_arm(arms)
    verdict = (
        "its interval and the SFT policy's overlap, so this comparison does not show a gain over SFT"
        if _overlap(best["gold"], sft["gold"])
        else f"{'above' if best['gold']['mean'] > sft['gold']['mean'] else 'below'} the SFT policy's "
        f"{sft['gold']['mean']:.3f} with non-overlapping 95% intervals"
    )
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
    best, kl, also = _best_arm(arms)
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
