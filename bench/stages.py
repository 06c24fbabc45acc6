"""Per-stage throughput against this machine's measured matmul peak (MFU), in one process run.

    python -m bench stages [--models tiny,smollm2] [--stages sft,reward,dpo] [--steps 8] [--out runs/bench/stages]

1. The limit: dense fp32 (and bf16) matmul throughput, measured first (best of 5 timed 2048^3 products; bf16
   at 512^3, since CPUs without bf16 units run it orders of magnitude slower).
2. For each model (`tiny`: the smoke pipeline's tiny random model; `smollm2`: the quickstart's SmolLM2-135M-Instruct
   with LoRA) and stage, `alignment stage <stage>` with the pipeline's own section for `--steps` optimizer steps
   (SFT first: reward and DPO start from its artifact), W&B off, no checkpoints. Each stage's figures come from
   its own log: TRL's `train_runtime` (the training loop, model loading excluded), `num_tokens` (tokens fed to the
   policy) and samples/s; peak resident memory of the stage process from `/usr/bin/time`.
3. MFU = model FLOPs per second / the measured fp32 peak. Model FLOPs per token, N = all parameters counted once
   (embeddings are tied in both models, so N includes the LM head's matmul; attention's sequence-length term is
   left out, as in 6N): full fine-tuning 6N (forward 2N, backward 4N); LoRA 4N (forward 2N and the backward pass
   through frozen weights for activation gradients 2N; the adapters' weight gradients are negligible); DPO adds
   the reference's forward pass, 2N per token (with LoRA: the adapter-disabled policy).
Results: `<out>/result.json` and a Markdown table on stdout.
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
MODELS = {"tiny": "configs/pipelines/smoke.yaml", "smollm2": "configs/pipelines/quickstart.yaml"}


def matmul_peak(dtype: Any, size: int = 2048, repeats: int = 5) -> float:
    """Best observed FLOP/s of a dense (size x size) @ (size x size) product in `dtype` on this CPU."""
    import torch

    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    torch.matmul(a, b)  # warm-up: thread pool, allocator
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def flops_per_token(stage: str, method: str, parameters: int) -> int:
    training = 6 * parameters if method == "full" else 4 * parameters
    return training + (2 * parameters if stage == "dpo" else 0)


def _parameters(model_name: str) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from alignment.models import resolve_model_path

    path = resolve_model_path(model_name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    return sum(p.numel() for p in model.parameters())


def run_stage(pipeline: str, stage: str, out: Path, steps: int) -> dict[str, Any]:
    log = out / "logs" / f"{stage}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    rss_file = out / "logs" / f"{stage}.maxrss"
    command = [
        "/usr/bin/time", "-f", "%M", "-o", str(rss_file),
        sys.executable, "-m", "alignment.cli", "stage", stage, "--config", pipeline,
        f"output_dir={out}", "tracking.mode=disabled", f"{stage}.max_steps={steps}", f"{stage}.logging_steps=1",
        f"{stage}.save_steps=100000",
    ]  # fmt: skip
    print(f"$ {' '.join(command[5:])}", flush=True)
    started = time.perf_counter()
    with log.open("w") as handle:
        code = subprocess.run(
            command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, env=os.environ
        ).returncode
    wall = time.perf_counter() - started
    if code:
        raise SystemExit(
            f"{stage} failed ({code}); log: {log}\n" + "\n".join(log.read_text().splitlines()[-20:])
        )
    history = json.loads((out / stage / "log_history.json").read_text())
    final = next(entry for entry in reversed(history) if "train_runtime" in entry)
    tokens = max((entry["num_tokens"] for entry in history if "num_tokens" in entry), default=None)
    return {
        "train_runtime_s": final["train_runtime"],
        "samples_per_s": final.get("train_samples_per_second"),
        "num_tokens": tokens,
        "stage_wall_s": wall,
        "peak_rss_gib": int(rss_file.read_text().split()[-1]) / 2**20,
    }


def main(argv: list[str] | None = None) -> None:
    import torch

    from alignment.config import load_pipeline

    parser = argparse.ArgumentParser(prog="python -m bench stages", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny,smollm2")
    parser.add_argument("--stages", default="sft,reward,dpo")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", default="runs/bench/stages")
    args = parser.parse_args(argv)
    out = Path(args.out)
    result: dict[str, Any] = {
        "command": "python -m bench stages " + " ".join(argv or sys.argv[2:]),
        "date": time.strftime("%Y-%m-%d"),
        "threads": torch.get_num_threads(),
        "peak_fp32_flops": matmul_peak(torch.float32),
        "peak_bf16_flops": matmul_peak(torch.bfloat16, size=512),  # bf16 matmul on CPUs without AMX is slow
        "runs": [],
    }
    print(
        f"matmul peak: fp32 {result['peak_fp32_flops'] / 1e9:.1f} GFLOP/s, bf16 {result['peak_bf16_flops'] / 1e9:.1f}"
    )
    for model in args.models.split(","):
        pipeline = load_pipeline(MODELS[model])
        parameters = _parameters(pipeline.model.name_or_path)
        for stage in args.stages.split(","):
            method = pipeline.model.tuning.method
            measured = run_stage(MODELS[model], stage, out / model, args.steps)
            tokens_per_s = (
                measured["num_tokens"] / measured["train_runtime_s"] if measured["num_tokens"] else None
            )
            flops = flops_per_token(stage, method, parameters)
            mfu = tokens_per_s * flops / result["peak_fp32_flops"] if tokens_per_s else None
            row = {"model": model, "stage": stage, "method": method, "parameters": parameters, **measured}
            row |= {"tokens_per_s": tokens_per_s, "flops_per_token": flops, "mfu_fp32": mfu}
            result["runs"].append(row)
            print(json.dumps(row), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))


def table(result: dict[str, Any]) -> str:
    lines = [
        "| model | stage | tuning | tokens/s | samples/s | MFU (fp32 peak) | train loop s | peak RSS GiB |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["runs"]:
        tokens = "-" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:,.0f}"
        mfu = "-" if r["mfu_fp32"] is None else f"{100 * r['mfu_fp32']:.1f}%"
        lines.append(
            f"| {r['model']} | {r['stage']} | {r['method']} | {tokens} | {r['samples_per_s'] or 0:.2f} | {mfu} "
            f"| {r['train_runtime_s']:.1f} | {r['peak_rss_gib']:.2f} |"
        )
    return "\n".join(lines)
