"""The model card's body sections: the stages, the data and its licenses, the reward model's diagnostics, the
evaluation, the training metrics, the W&B runs and each stage's config."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from alignment.hub.lineage import (
    BaseModel,
    DataRow,
    Node,
    _short,
    missing_inputs,
    ordered,
    pipeline_gold,
    wandb_text,
)


def _lineage_section(node: Node) -> list[str]:
    lines = [
        "## Stages",
        "",
        "Each stage's artifact, upstream first: its config hash (of the stage's resolved config), the hash of its "
        "MANIFEST.json (what the next stage recorded as its input), model kind, precision and processes.",
        "",
        "| stage | config hash | manifest hash | inputs | model | precision | processes | wall time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for current in ordered(node):
        m = current.manifest
        inputs = ", ".join(f"{up.name}: `{up.recorded_hash}`" for up in current.inputs) or "-"
        precision = m.get("precision") or {}
        lines.append(
            f"| {current.stage}{' (this model)' if current is node else ''} | `{m.get('config_hash', '?')}` | "
            f"`{current.manifest_hash}` | {inputs} | {m.get('model_kind', '?')} | "
            f"{precision.get('trained_weights', '?')}{', bf16 autocast' if precision.get('bf16_autocast') else ''} | "
            f"{m.get('world_size', '?')} | {_seconds(m.get('wall_time_s'))} |"
        )
    for current in ordered(node):
        reward = current.section.get("reward_model")
        if current.stage in ("ppo", "grpo", "rloo") and reward:
            lines.append(f"\n{current.stage} optimised the reward `{_short(str(reward))}`.")
    for downstream, up in missing_inputs(node):
        lines.append(
            f"\nInput `{up.name}` of {downstream.stage} (manifest `{up.recorded_hash}`): {up.problem}."
        )
    return [*lines, ""]


def _data_section(
    rows: list[DataRow], license_id: str | None, license_name: str | None, base: BaseModel
) -> list[str]:
    lines = [
        "## Data",
        "",
        "Every stage trains on an immutable snapshot of its validated rows; the hash is of the snapshot's content "
        "(`<name>_eval`: the held-out split of the same source).",
        "",
        "| stage | snapshot | hash | source | license |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        note = f" ({row.origin.note})" if row.origin.note else ""
        lines.append(
            f"| {row.stage} | {row.name} | `{row.snapshot_hash}` | {row.origin.origin}{note} | {row.origin.license or 'unknown'} |"
        )
    lines += ["", "### License", ""]
    if license_id:
        named = license_name or license_id
        lines.append(
            f"The card's license, `{license_id}`{f' ({named})' if license_name else ''}, is that of the training data"
            f"{' and the base model' if base.license else ''}, as recorded above."
        )
    else:
        unknown = sorted({row.origin.origin for row in rows if row.origin.license is None})
        lines.append(
            "No license is set: the license of "
            + ("; ".join(unknown) if unknown else "the data")
            + " is not known here. Set one in this card's metadata before making the model public."
        )
    if base.hub_id and not base.license:
        lines.append(f"The base model's own license applies too: see the card of {base.hub_id}.")
    return [*lines, ""]


def _reward_section(lineage: list[Node]) -> list[str]:
    lines: list[str] = []
    for current in lineage:
        if current.stage != "reward":
            continue
        path = current.path / "diagnostics.json"
        diagnostics = json.loads(path.read_text()) if path.is_file() else None
        lines += [
            "## Reward model diagnostics",
            "",
            f"Reward model `{current.manifest_hash}` on its held-out pairs:",
            "",
        ]
        if diagnostics is None:
            m = current.manifest.get("metrics") or {}
            lines += [
                f"- held-out accuracy {_num(m.get('heldout_accuracy'))} (95% CI {_num(m.get('heldout_accuracy_ci95_low'))}-"
                f"{_num(m.get('heldout_accuracy_ci95_high'))}, {m.get('heldout_pairs', '?')} pairs); diagnostics.json absent",
                "",
            ]
            continue
        low, high = diagnostics.get("accuracy_ci95", [math.nan, math.nan])
        lines += [
            "| figure | value |",
            "|---|---|",
            f"| held-out pairs | {diagnostics.get('n_pairs', '?')} |",
            f"| accuracy (95% CI) | {_num(diagnostics.get('accuracy'))} ({_num(low)}-{_num(high)}) |",
            f"| ties | {_num(diagnostics.get('tie_fraction'))} |",
            f"| mean margin (chosen - rejected) | {_num(diagnostics.get('mean_margin'))} |",
            f"| reward vs length: Spearman / Pearson | {_num(diagnostics.get('length_spearman'))} / "
            f"{_num(diagnostics.get('length_pearson'))} |",
            f"| prefers the longer response | {_num(diagnostics.get('prefers_longer'))} "
            f"(chosen is longer in {_num(diagnostics.get('chosen_is_longer'))}) |",
        ]
        if diagnostics.get("calibration"):
            lines += [
                "",
                "Calibration: accuracy by |margin| bucket",
                "",
                "| bucket | abs margin | pairs | accuracy |",
                "|---|---|---|---|",
            ]
            for bucket in diagnostics["calibration"]:
                lines.append(
                    f"| {bucket.get('bucket')} | {_num(bucket.get('abs_margin_min'))}-{_num(bucket.get('abs_margin_max'))} | "
                    f"{bucket.get('n')} | {_num(bucket.get('accuracy'))} |"
                )
        for warning in diagnostics.get("warnings") or []:
            lines.append(f"\n> warning: {warning}")
        normalization = current.path / "normalization.json"
        if normalization.is_file():
            stats = json.loads(normalization.read_text())
            lines.append(
                f"\nNormalisation: mean {_num(stats.get('mean'))}, std {_num(stats.get('std'))} over "
                f"{stats.get('n', '?')} {stats.get('source', 'samples')}."
            )
        lines.append("")
    return lines


EVAL_FIGURES = (
    ("gold", "gold score"),
    ("rm_score", "proxy RM score"),
    ("kl", "KL to reference"),
    ("length", "response length (tokens)"),
)


def _evaluation_section(node: Node, evaluations: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    gold = pipeline_gold(node)
    if not evaluations and gold is None:
        return []
    lines = ["## Evaluation", ""]
    for path, result in evaluations:
        prompts = result.get("prompts") or {}
        decoding = result.get("decoding") or {}
        reference = result.get("reference")
        lines += [
            f"`{path.name}` ({path.parent.name}): {result.get('n_prompts', '?')} prompts of `{_short(str(prompts.get('source', '?')))}`"
            f"{' split ' + str(prompts['split']) if prompts.get('split') else ''}, "
            + ", ".join(f"{k} {v}" for k, v in decoding.items() if k != "batch_size")
            + f"; proxy RM `{_short(str(result.get('rm')))}`, gold `{result.get('gold')}`"
            + (f"; reference `{Path(str(reference)).name}`" if reference else "")
            + (f"; best of {result['best_of']}" if int(result.get("best_of", 1)) > 1 else "")
            + ". Means with 95% confidence intervals (normal approximation):",
            "",
        ]
        metrics = result["metrics"]
        ref = metrics.get("reference") or {}
        lines += ["| metric | this model | reference | n |" if ref else "| metric | this model | n |"]
        lines += ["|---|---|---|---|" if ref else "|---|---|---|"]
        for key, label in EVAL_FIGURES:
            item = metrics.get(key)
            if not isinstance(item, dict):
                continue
            label = f"{label} ({item['estimator']})" if item.get("estimator") else label
            cells = [label, _interval(item)] + (
                [_interval(ref[key]) if isinstance(ref.get(key), dict) else "-"] if ref else []
            )
            lines.append("| " + " | ".join([*cells, str(item.get("n", "?"))]) + " |")
        for key in ("eos_rate", "distinct_1", "distinct_2"):
            if key in metrics:
                cells = [key.replace("_", " "), _num(metrics[key])] + ([_num(ref.get(key))] if ref else [])
                lines.append("| " + " | ".join([*cells, ""]) + " |")
        for key, label in (("win_rate_gold", "gold"), ("win_rate_rm", "proxy RM")):
            win = metrics.get(key)
            if isinstance(win, dict):
                lines.append(
                    f"\nWin rate against the reference by {label}: {_num(win.get('win_rate'))} ± "
                    f"{_num(win.get('ci95_half_width'))} (wins {win.get('wins')}, ties {win.get('ties')}, losses "
                    f"{win.get('losses')} of {win.get('n')})."
                )
        lines.append("")
    if gold is not None:
        lines += [
            f"The pipeline's held-out gold evaluation: {_num(gold['mean'])} ± {_num(gold.get('ci95_half_width'))} "
            f"(95% CI, {gold.get('n', '?')} prompts, gold_eval.json).",
            "",
        ]
    return lines


def _metrics_section(node: Node) -> list[str]:
    metrics = node.manifest.get("metrics") or {}
    shown = {
        k: v
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not k.endswith(("_runtime", "_per_second")) and k != "epoch"
    }
    if not shown:
        return []
    lines = [
        "## Training metrics",
        "",
        f"At the end of {node.stage} (metrics.json):",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {_num(v)} |" for k, v in shown.items()]
    return [*lines, ""]


def _wandb_section(lineage: list[Node], entity: str | None) -> list[str]:
    lines = ["## Weights & Biases", ""]
    lines += [f"- {n.stage}: {wandb_text(n, entity)}" for n in lineage]
    return [*lines, ""]


def _configs_section(lineage: list[Node]) -> list[str]:
    lines = [
        "## Configs",
        "",
        "Each stage's section of its resolved config (`resolved_config.yaml` holds the whole pipeline's):",
        "",
    ]
    for current in lineage:
        shown = {
            "model": current.section.get("model") or current.config.get("model"),
            current.stage: current.section,
        }
        lines += [
            f"<details><summary>{current.stage} (config hash {current.manifest.get('config_hash', '?')})</summary>",
            "",
            "```yaml",
            yaml.safe_dump(shown, sort_keys=False).rstrip(),
            "```",
            "",
            "</details>",
            "",
        ]
    return lines


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (bool, int)):
        return str(value)
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _interval(item: dict[str, Any]) -> str:
    half = item.get("ci95_half_width")
    text = _num(item.get("mean"))
    return text + (f" ± {_num(half)}" if isinstance(half, (int, float)) and not math.isnan(half) else "")


def _seconds(value: Any) -> str:
    return f"{value:.0f} s" if isinstance(value, (int, float)) else "-"
