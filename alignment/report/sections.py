"""report.md's sections on the paired comparisons, gold at equal KL and the over-optimisation fits, and its last
section: what reproduces it."""

from __future__ import annotations

import math
from typing import Any

from alignment.report.summary import OPTIMISERS, _detectable
from alignment.report.tables import _interval


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
