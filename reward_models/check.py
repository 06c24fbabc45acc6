"""Score held-out pairs with an RM and write its diagnostics; optionally compute its normalisation statistics.

    python -m reward_models.check --rm runs/x/reward --data pairs.jsonl [--out DIR]
    alignment rm-check --rm runs/x/reward --data pairs.jsonl

The reward stage runs this in a fresh process on the main rank after saving the RM (loading a model inside a
ZeRO-3 process is unsafe once the other ranks have exited), so the stage and `alignment rm-check` share one path.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from reward_models.diagnostics import Diagnostics, diagnose, to_markdown
from reward_models.learned import NORMALIZATION_FILE, LearnedRewardModel, normalization_stats

logger = logging.getLogger(__name__)

DIAGNOSTICS_JSON = "diagnostics.json"
DIAGNOSTICS_MD = "diagnostics.md"
MIN_ACCURACY_DEFAULT = 0.6


def _reply(messages: Sequence[dict[str, str]]) -> str:
    return messages[-1]["content"] if messages else ""


def score_pairs(rm: LearnedRewardModel, rows: Sequence[dict[str, Any]]) -> Diagnostics:
    """Diagnostics of `rm` on canonical preference rows (prompt, chosen, rejected, optional source)."""
    prompts = [row["prompt"] for row in rows]
    chosen = [_reply(row["chosen"]) for row in rows]
    rejected = [_reply(row["rejected"]) for row in rows]
    chosen_scores = rm.raw_score(prompts, chosen)
    rejected_scores = rm.raw_score(prompts, rejected)
    length = lambda text: len(rm.tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    sources = [row.get("source") for row in rows]
    return diagnose(
        chosen_scores.tolist(),
        rejected_scores.tolist(),
        [length(t) for t in chosen],
        [length(t) for t in rejected],
        sources if any(sources) else None,
    )


def policy_samples(
    policy_path: str | Path, prompts: Sequence[Any], max_new_tokens: int = 64, seed: int = 0
) -> list[str]:
    """Completions sampled (temperature 1) from a policy artifact, for normalisation on the policy's own outputs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(policy_path, use_safetensors=True).eval()
    torch.manual_seed(seed)
    out: list[str] = []
    for start in range(0, len(prompts), 16):
        chunk = prompts[start : start + 16]
        texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in chunk]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            generated = model.generate(
                **batch,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
            )
        out += tokenizer.batch_decode(generated[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return out


def compute_normalization(
    rm: LearnedRewardModel,
    rows: Sequence[dict[str, Any]],
    mode: str,
    samples: int,
    policy_path: str | Path | None = None,
    seed: int = 0,
) -> dict[str, Any] | None:
    if mode == "none":
        return None
    subset = list(rows)[:samples]
    prompts = [row["prompt"] for row in subset]
    if mode == "chosen":
        completions = [_reply(row["chosen"]) for row in subset]
        source = f"chosen responses of {len(subset)} training pairs"
    elif mode == "policy_samples":
        if policy_path is None:
            raise ValueError("normalization=policy_samples needs the initial policy artifact")
        completions = policy_samples(policy_path, prompts, seed=seed)
        source = f"samples of {policy_path} on {len(subset)} training prompts"
    else:
        raise ValueError(f"unknown normalization mode {mode!r}; use chosen, policy_samples or none")
    return normalization_stats(rm.raw_score(prompts, completions), source)


def write_reports(out: Path, report: Diagnostics, title: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / DIAGNOSTICS_JSON).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    (out / DIAGNOSTICS_MD).write_text(to_markdown(report, title))


class RewardModelNotGoodEnough(RuntimeError):
    pass


def check_good_enough(
    rm_path: str | Path, min_accuracy: float = MIN_ACCURACY_DEFAULT, force: bool = False
) -> dict:
    """Policy stages call this before optimising against an RM artifact: refuse below `min_accuracy`."""
    path = Path(rm_path) / DIAGNOSTICS_JSON
    if not path.is_file():
        if force:
            return {}
        raise RewardModelNotGoodEnough(
            f"{rm_path} has no {DIAGNOSTICS_JSON}: run `alignment rm-check --rm {rm_path} --data <held-out pairs> "
            f"--out {rm_path}` first, or set force=true"
        )
    report = json.loads(path.read_text())
    if report["accuracy"] < min_accuracy and not force:
        raise RewardModelNotGoodEnough(
            f"reward model {rm_path}: held-out accuracy {report['accuracy']:.3f} "
            f"(95% CI {report['accuracy_ci95'][0]:.3f}-{report['accuracy_ci95'][1]:.3f}, {report['n_pairs']} pairs) "
            f"is below the required {min_accuracy:.3f}. Optimising against it would mostly exploit its errors. "
            "Train a better RM (more data, more steps, a larger model), lower the threshold, or set force=true."
        )
    return report


def main(argv: list[str] | None = None) -> int:
    from alignment.data import DataConfig, load_checked

    parser = argparse.ArgumentParser(prog="alignment rm-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rm", required=True, help="reward model artifact directory")
    parser.add_argument("--data", required=True, help="preference pairs (any supported source/format)")
    parser.add_argument("--format", default="auto")
    parser.add_argument("--out", help="write diagnostics.json / diagnostics.md here")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-rows", type=int)
    parser.add_argument("--normalization", choices=["chosen", "policy_samples", "none"], default="none")
    parser.add_argument("--normalization-data", help="training pairs for the statistics (default: --data)")
    parser.add_argument("--normalization-samples", type=int, default=256)
    parser.add_argument("--policy", help="initial policy artifact, for --normalization policy_samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", help="how the report names the RM (default: --rm)")
    args = parser.parse_args(argv)
    name = args.name or args.rm

    rm = LearnedRewardModel(args.rm, batch_size=args.batch_size)
    rows = load_checked(
        DataConfig(source=args.data, format=args.format, max_rows=args.max_rows), "preference"
    ).rows
    report = score_pairs(rm, rows)
    if args.out:
        out = Path(args.out)
        write_reports(out, report, f"Reward model diagnostics: {name} on {args.data}")
        if args.normalization != "none":
            source = args.normalization_data or args.data
            norm_rows = load_checked(DataConfig(source=source, format=args.format), "preference").rows
            stats = compute_normalization(
                rm, norm_rows, args.normalization, args.normalization_samples, args.policy, args.seed
            )
            (out / NORMALIZATION_FILE).write_text(json.dumps(stats, indent=2) + "\n")
    print(to_markdown(report, f"Reward model diagnostics: {name}"), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
