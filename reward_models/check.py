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

from alignment.finite import json_safe, require_finite
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
    policy_path: str | Path,
    prompts: Sequence[Any],
    max_new_tokens: int = 64,
    seed: int = 0,
    backend: str = "hf",
    dtype: str = "float32",
) -> list[str]:
    """Completions sampled (temperature 1, seeded) from a policy artifact, for normalisation on the policy's own
    outputs: through the generation engine (`backend`: hf, vllm or auto), the policy in `dtype` on the device."""
    from alignment.evaluate import Decoding, PolicySampler, sample
    from alignment.generation import GenerationConfig

    sampler = PolicySampler(GenerationConfig(backend=backend), dtype)  # type: ignore[arg-type]
    model, tokenizer = sampler.load(policy_path)
    decoding = Decoding(max_new_tokens=max_new_tokens, temperature=1.0, samples_per_prompt=1, seed=seed)
    return sample(model, tokenizer, prompts, decoding, engine=sampler.engine(model, tokenizer)).completions


def compute_normalization(
    rm: LearnedRewardModel,
    rows: Sequence[dict[str, Any]],
    mode: str,
    samples: int,
    policy_path: str | Path | None = None,
    seed: int = 0,
    backend: str = "hf",
    dtype: str = "float32",
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
        completions = policy_samples(policy_path, prompts, seed=seed, backend=backend, dtype=dtype)
        source = f"samples of {policy_path} on {len(subset)} training prompts"
    else:
        raise ValueError(f"unknown normalization mode {mode!r}; use chosen, policy_samples or none")
    return normalization_stats(rm.raw_score(prompts, completions), source)


def write_reports(out: Path, report: Diagnostics, title: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / DIAGNOSTICS_JSON).write_text(
        json.dumps(json_safe(report.to_dict()), indent=2, allow_nan=False) + "\n"
    )
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


def _trained_dtype(rm_path: Path) -> str:
    """The `model.dtype` an RM artifact's stage ran with (MANIFEST.json's precision record), else float32."""
    manifest = rm_path / "MANIFEST.json"
    if manifest.is_file():
        return json.loads(manifest.read_text()).get("precision", {}).get("model_dtype", "float32")
    return "float32"


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
    parser.add_argument(
        "--backend",
        choices=["auto", "hf", "vllm"],
        default="auto",
        help="generation engine for --normalization policy_samples: vllm where installed (auto), or hf",
    )
    parser.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="the RM's and the policy's dtype (auto: bf16 where the device has bf16 units); default: the "
        "model.dtype the RM artifact was trained with (its MANIFEST.json), so its stored diagnostics reproduce",
    )
    parser.add_argument("--name", help="how the report names the RM (default: --rm)")
    args = parser.parse_args(argv)
    name = args.name or args.rm

    from alignment.precision import inference_dtype

    if args.dtype is None:
        args.dtype = _trained_dtype(Path(args.rm))
    rm = LearnedRewardModel(args.rm, batch_size=args.batch_size, dtype=inference_dtype(args.dtype))
    rows = load_checked(
        DataConfig(source=args.data, format=args.format, max_rows=args.max_rows), "preference"
    ).rows
    report = score_pairs(rm, rows)
    require_finite(f"held-out diagnostics of {name}", report.to_dict(), ("accuracy",))
    if args.out:
        out = Path(args.out)
        write_reports(out, report, f"Reward model diagnostics: {name} on {args.data}")
        if args.normalization != "none":
            source = args.normalization_data or args.data
            norm_rows = load_checked(DataConfig(source=source, format=args.format), "preference").rows
            stats = compute_normalization(
                rm,
                norm_rows,
                args.normalization,
                args.normalization_samples,
                args.policy,
                args.seed,
                args.backend,
                args.dtype,
            )
            if stats is not None:
                require_finite(f"normalisation statistics of {name}", stats, ("mean", "std"))
            (out / NORMALIZATION_FILE).write_text(json.dumps(stats, indent=2, allow_nan=False) + "\n")
    print(to_markdown(report, f"Reward model diagnostics: {name}"), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
