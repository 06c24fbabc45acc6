"""`write`: report.md, compare.json and the plots of one comparison, and the same in its W&B group."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alignment.report.plots import plot_frontier, plot_overoptimisation, plot_training_curves
from alignment.report.sections import reproduce_section, statistics_sections
from alignment.report.summary import _against_sft, summary_lines
from alignment.report.tables import COLUMNS, aggregate, markdown_table, rich_table
from alignment.statistics import analyse


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
