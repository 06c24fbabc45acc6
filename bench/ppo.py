"""PPO benchmark: our PPO against a learned RM and against `rule:tasks`, and TRL 1.12.0's PPOTrainer beside it.

    python -m bench ppo --pipeline configs/pipelines/quickstart-ppo.yaml --from runs/quickstart-ppo \\
        [--peer-python .venv-trl112/bin/python] [--out runs/bench/ppo] [--kl-sweep trl-rm:0.2,0.5] [key=value ...]

From a finished pipeline's SFT policy and RM (`--from`, e.g. the quickstart-ppo run), in one process run:
1. *ours-rm*: `alignment stage ppo` against the RM, with the pipeline's `ppo` section (overrides apply);
2. *ours-rule*: the same against the gold checker `rule:tasks` (no learned RM in the loop);
3. *trl-rm* (with `--peer-python`): TRL 1.12.0's PPOTrainer in its own virtual environment
   (bench/peers/trl112_ppo.py) on the same SFT policy, RM (normalised the same way), prompts, rollout and
   mini-batch sizes, generation length and temperature, KL coefficient, clip ranges, learning rate, LoRA and
   critic freezing, and number of PPO updates;
   `--kl-sweep ARM:C1,C2` adds runs of an arm at other KL coefficients (`ARM@kl=C`), to compare gold scores
   where the arms reach the same KL;
4. evaluation of the SFT policy and every arm with the same code (alignment.evaluate) on the pipeline's held-out
   `evaluation` prompts: gold score of greedy answers, the RM's score of those answers, and KL(policy || SFT)
   estimated on the policy's own samples at temperature 1.

Rollout samples per second are taken over the training loop only (sum of per-iteration wall time for ours, the
wall time of `trainer.train()` for TRL; model loading and saving excluded on both sides). Results:
`<out>/result.json` and a Markdown table on stdout (what docs/BENCHMARKS.md quotes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PEER_SCRIPT = REPO / "bench" / "peers" / "trl112_ppo.py"


def _run(command: list[str], log: Path, env: dict[str, str] | None = None) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"$ {' '.join(command)}   (log: {log})", flush=True)
    with log.open("w") as handle:
        result = subprocess.run(
            command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    if result.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise SystemExit(f"failed ({result.returncode}): {' '.join(command)}\n{tail}")


def _our_arm(pipeline_path: str, overrides: list[str], out: Path, sft: Path, reward: str) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "alignment.cli",
        "stage",
        "ppo",
        "--config",
        pipeline_path,
        *overrides,
        f"output_dir={out}",
        f"ppo.init_from={sft}",
        f"ppo.reward_model={reward}",
        "ppo.save_steps=100000",  # no mid-run checkpoints (the peer saves none either)
        "tracking.mode=disabled",
    ]
    _run(command, out / "ppo.log")
    history = json.loads((out / "ppo" / "log_history.json").read_text())
    seconds = sum(entry["time/iteration_s"] for entry in history)
    samples = sum(entry["throughput/samples_per_s"] * entry["time/iteration_s"] for entry in history)
    phases = {
        "generation": sum(entry["time/generation_s"] for entry in history),
        "rollout_forward": sum(entry["time/forward_s"] for entry in history),
        "scoring": sum(entry["time/scoring_s"] for entry in history),
        "training": sum(entry["time/training_s"] for entry in history),
    }
    return {
        "policy": str(out / "ppo"),
        "train_seconds": seconds,
        "samples": round(samples),
        "samples_per_s": samples / seconds,
        "phases_s": phases,
        "train_kl_last": history[-1]["objective/kl"],
        "train_score_last": history[-1]["reward/score"],
    }


def _peer_settings(pipeline: Any, sft: Path, reward: Path, prompts_file: Path) -> dict[str, Any]:
    from alignment.config import stage_args

    args = stage_args(pipeline, "ppo", output_dir=str(Path(pipeline.output_dir) / ".work" / "ppo"))
    tuning = pipeline.model.tuning
    unsupported = {
        "model.tuning.method": (tuning.method, "lora"),
        "ppo.adaptive_kl": (args.adaptive_kl, False),
        "ppo.whiten_rewards": (args.whiten_rewards, False),
        "ppo.kl_estimator": (args.kl_estimator, "k1"),
        "ppo.lr_scheduler_type": (
            str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
            "constant",
        ),
    }
    for key, (value, needed) in unsupported.items():
        if value != needed:
            raise SystemExit(f"the side-by-side mirrors {key}={needed!r} only; this config has {value!r}")
    mini_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps
    return {
        "sft": str(sft),
        "reward_model": str(reward),
        "prompts": str(prompts_file),
        "seed": args.seed,
        "iterations": args.max_steps,
        "rollout_batch_size": args.rollout_batch_size,
        "mini_batch_size": mini_batch,
        "ppo_epochs": args.ppo_epochs,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "missing_eos_penalty": args.missing_eos_penalty,
        "kl_coef": args.kl_coef,
        "cliprange": args.cliprange,
        "cliprange_value": args.cliprange_value,
        "vf_coef": args.vf_coef,
        "gamma": args.gamma,
        "lam": args.lam,
        "learning_rate": args.learning_rate,
        "max_grad_norm": args.max_grad_norm,
        "critic_trainable_last_n_blocks": args.critic_trainable_last_n_blocks,
        "lora": {
            "r": tuning.lora_r,
            "alpha": tuning.lora_alpha,
            "dropout": tuning.lora_dropout,
            "target_modules": tuning.target_modules,
        },
    }, args


def _kl_coef(pipeline: Any) -> float:
    from alignment.config import stage_args

    return stage_args(pipeline, "ppo", output_dir=str(Path(pipeline.output_dir) / ".work" / "ppo")).kl_coef


def _peer_arm(peer_python: str, pipeline: Any, out: Path, sft: Path, reward: Path) -> dict[str, Any]:
    from alignment.data import load_checked

    out.mkdir(parents=True, exist_ok=True)
    prompts_file = out / "prompts.jsonl"
    settings, args = _peer_settings(pipeline, sft, reward, prompts_file)
    rows = load_checked(args.data, "prompt").rows
    prompts_file.write_text("".join(json.dumps({"prompt": row["prompt"]}) + "\n" for row in rows))
    (out / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    _run(
        [peer_python, str(PEER_SCRIPT), "--settings", str(out / "settings.json"), "--out", str(out)],
        out / "peer.log",
    )
    result = json.loads((out / "result.json").read_text())
    history = [entry for entry in result["log_history"] if "objective/kl" in entry]
    result["train_kl_last"] = history[-1]["objective/kl"] if history else None
    result["train_score_last"] = history[-1]["objective/scores"] if history else None
    return result


def _evaluate(policies: dict[str, str], sft: Path, reward: Path, pipeline: Any, kl_samples: int) -> dict:
    import reward_models
    from alignment.data import load_checked
    from alignment.evaluate import generate, mean_and_half_width, sampled_kl
    from alignment.models import load_artifact_for_inference
    from reward_models.rules import score_gold

    evaluation = pipeline.evaluation
    rows = [row for row in load_checked(evaluation.data, "prompt").rows if row.get("gold")]
    prompts = [row["prompt"] for row in rows]
    rm = reward_models.load(str(reward))
    reference, _ = load_artifact_for_inference(sft)
    results: dict[str, Any] = {}
    for name, path in policies.items():
        started = time.perf_counter()
        model, tokenizer = load_artifact_for_inference(path)
        completions = generate(model, tokenizer, prompts, evaluation.max_new_tokens, evaluation.batch_size)
        gold = [score_gold(row["gold"], text) for row, text in zip(rows, completions, strict=True)]
        rm_scores = rm.score(prompts, completions).tolist()
        kl = sampled_kl(
            model,
            reference,
            tokenizer,
            prompts,
            max_new_tokens=evaluation.max_new_tokens,
            batch_size=evaluation.batch_size,
            samples_per_prompt=kl_samples,
        )
        gold_mean, gold_hw = mean_and_half_width(gold)
        rm_mean, rm_hw = mean_and_half_width(rm_scores)
        results[name] = {
            "gold": gold_mean,
            "gold_ci95": gold_hw,
            "rm_score": rm_mean,
            "rm_score_ci95": rm_hw,
            "kl": kl["mean"],
            "kl_ci95": kl["ci95_half_width"],
            "kl_samples": kl["n"],
            "sampled_length": kl["mean_length"],
            "sampled_eos_rate": kl["eos_rate"],
            "greedy_samples": [
                {"prompt": p[-1]["content"], "completion": c, "gold": g}
                for p, c, g in list(zip(prompts, completions, gold, strict=True))[:6]
            ],
            "eval_seconds": time.perf_counter() - started,
        }
        print(
            f"[eval] {name}: gold {gold_mean:.3f} ± {gold_hw:.3f}, RM {rm_mean:+.3f}, "
            f"KL {kl['mean']:.3f} ± {kl['ci95_half_width']:.3f}",
            flush=True,
        )
    return {"n_prompts": len(rows), "results": results}


def table(result: dict[str, Any]) -> str:
    arms = result["arms"]
    evaluated = result["evaluation"]["results"]
    lines = [
        "| policy | reward in the loop | kl_coef | gold (95% CI) | RM score | KL to SFT (95% CI) | train samples/s | "
        "time split gen / rollout fwd / score / train (s) |",
        "|---|---|---:|---|---:|---|---:|---|",
    ]
    for name, values in evaluated.items():
        arm = arms.get(name, {})
        phases = arm.get("phases_s", {})
        if name.startswith("trl"):
            split = (
                f"{phases.get('generation', 0):.1f} / "
                f"{phases.get('reference_forward', 0) + phases.get('value_forward', 0):.1f} / "
                f"{phases.get('scoring', 0):.1f} / "
                f"{arm['train_seconds'] - sum(v for k, v in phases.items() if k != 'forward_train'):.1f}"
            )
        elif phases:
            split = " / ".join(
                f"{phases[k]:.1f}" for k in ("generation", "rollout_forward", "scoring", "training")
            )
        else:
            split = "-"
        speed = f"{arm['samples_per_s']:.3f}" if arm else "-"
        lines.append(
            f"| {name} | {arm.get('reward', '-')} | {arm.get('kl_coef', '-')} | {values['gold']:.3f} ± {values['gold_ci95']:.3f} | "
            f"{values['rm_score']:+.3f} | {values['kl']:.2f} ± {values['kl_ci95']:.2f} | {speed} | {split} |"
        )
    if "trl-rm" in arms and "ours-rm" in arms:
        ratio = arms["ours-rm"]["samples_per_s"] / arms["trl-rm"]["samples_per_s"]
        lines.append("")
        lines.append(f"Rollout samples per second, ours / TRL 1.12.0: **{ratio:.2f}x** (same run).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench ppo", description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default="configs/pipelines/quickstart-ppo.yaml")
    parser.add_argument(
        "--from", dest="source", default="runs/quickstart-ppo", help="finished run with sft/ and reward/"
    )
    parser.add_argument(
        "--peer-python", help="python of the TRL 1.12.0 venv (make bench-peer-venv); omit to skip"
    )
    parser.add_argument("--out", default="runs/bench/ppo")
    parser.add_argument("--arms", default="ours-rm,ours-rule,trl-rm")
    parser.add_argument(
        "--kl-samples", type=int, default=2, help="samples per held-out prompt for the KL estimate"
    )
    parser.add_argument(
        "--kl-sweep",
        action="append",
        default=[],
        metavar="ARM:C1,C2",
        help="also run ARM (ours-rm, ours-rule, trl-rm) at these ppo.kl_coef values",
    )
    parser.add_argument(
        "overrides", nargs="*", help="key=value overrides of the pipeline (e.g. ppo.max_steps=8)"
    )
    cli = parser.parse_args(argv)

    from alignment.config import load_pipeline

    pipeline = load_pipeline(cli.pipeline, cli.overrides)
    if pipeline.evaluation is None:
        raise SystemExit(f"{cli.pipeline} has no `evaluation` section (the held-out prompts)")
    source = Path(cli.source)
    sft, reward = source / "sft", source / "reward"
    for path in (sft, reward):
        if not (path / "MANIFEST.json").is_file():
            raise SystemExit(f"{path} is not a finished artifact; run `alignment run {cli.pipeline}` first")
    out = Path(cli.out)
    arms_wanted = [a.strip() for a in cli.arms.split(",") if a.strip()]
    if "trl-rm" in arms_wanted and not cli.peer_python:
        arms_wanted.remove("trl-rm")
        print("no --peer-python: the TRL 1.12.0 arm is skipped", flush=True)

    runs = [(name, name, []) for name in arms_wanted]  # (arm name, kind, extra overrides)
    for sweep in cli.kl_sweep:
        kind, _, coefs = sweep.partition(":")
        if kind not in ("ours-rm", "ours-rule", "trl-rm") or not coefs:
            raise SystemExit(
                f"--kl-sweep {sweep!r}: expected ARM:C1,C2 with ARM ours-rm, ours-rule or trl-rm"
            )
        if kind == "trl-rm" and not cli.peer_python:
            raise SystemExit("--kl-sweep trl-rm needs --peer-python")
        for coef in coefs.split(","):
            runs.append((f"{kind}@kl={float(coef):g}", kind, [f"ppo.kl_coef={float(coef)}"]))

    started = time.strftime("%Y-%m-%d %H:%M:%S")
    arms: dict[str, Any] = {}
    for name, kind, extra in runs:
        overrides = [*cli.overrides, *extra]
        directory = out / name.replace("@kl=", "-kl")
        if kind == "trl-rm":
            arm_pipeline = load_pipeline(cli.pipeline, overrides)
            arms[name] = {
                "reward": "learned RM",
                **_peer_arm(cli.peer_python, arm_pipeline, directory, sft, reward),
            }
        else:
            spec = str(reward) if kind == "ours-rm" else "rule:tasks"
            arms[name] = {
                "reward": "learned RM" if kind == "ours-rm" else "rule:tasks",
                **_our_arm(cli.pipeline, overrides, directory, sft, spec),
            }
        arms[name]["kl_coef"] = _kl_coef(load_pipeline(cli.pipeline, overrides))
    policies = {"sft": str(sft), **{name: arm["policy"] for name, arm in arms.items()}}
    evaluation = _evaluate(policies, sft, reward, pipeline, cli.kl_samples)
    result = {
        "command": " ".join(["python -m bench ppo", *(argv if argv is not None else sys.argv[1:])]),
        "started": started,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "arms": arms,
        "evaluation": evaluation,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))


if __name__ == "__main__":
    main()
