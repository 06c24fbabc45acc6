"""One decoding step of each generation backend (alignment.generation), side by side in one process run.

    .venv-vllm/bin/python -m bench engines [--model smollm2-135m-instruct] [--batches 16,64] [--new-tokens 48]
        [--arms hf:float32,hf:bfloat16,vllm:float32,vllm:bfloat16] [--out runs/bench/engines]

Run it with the vLLM venv's python (`make vllm-venv`), which has both backends. The setting is PPO's rollout
(bench.decode's): a batch of the quickstart's PPO prompts, chat template, left padded, sampling at temperature
0.7 over the whole vocabulary, every sequence forced to `--new-tokens` tokens so every step does the same work.
Per arm and batch: (time of `--new-tokens` steps - time of 1 step) / (new_tokens - 1), best of 3 after a
warm-up call (reported apart: vLLM's first call warms up its kernels), so the prompt's prefill is left out.
`hf` arms decode with the model in that dtype (the rollout's path today when `dtype` is the policy's); `vllm`
arms build the engine from the fp32 model with the engine in that dtype. The CPU model and the fp32/bf16 matmul
peaks measured at the start of the run are recorded with the figures: compare ratios within one run only.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

from bench.decode import TEMPERATURE, rollout_query
from bench.stages import measure_peaks


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def engine_for(arm: str, model_path: str, tokenizer: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    from alignment.generation import GenerationConfig, create_engine

    backend, dtype = arm.split(":")
    load_dtype = getattr(torch, dtype) if backend == "hf" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=load_dtype).eval()
    config = GenerationConfig(backend=backend, dtype=dtype)  # type: ignore[arg-type]
    return create_engine(config, model, tokenizer, torch.device("cpu"), backend=backend, max_model_len=1024)


def timed(engine: Any, query: dict[str, Any], new_tokens: int) -> float:
    from alignment.generation import Sampling

    sampling = Sampling(new_tokens, TEMPERATURE, seed=0, min_new_tokens=new_tokens)
    started = time.perf_counter()
    out = engine.generate(query["input_ids"], query["attention_mask"], sampling, keep_logprobs=True)
    elapsed = time.perf_counter() - started
    if out.response.shape[1] != new_tokens:
        raise RuntimeError(f"{engine.backend}: {out.response.shape[1]} tokens instead of {new_tokens}")
    return elapsed


def per_step(engine: Any, query: dict[str, Any], new_tokens: int, repeats: int = 3) -> dict[str, float]:
    warm_up = timed(engine, query, new_tokens)
    full = min(timed(engine, query, new_tokens) for _ in range(repeats))
    one = min(timed(engine, query, 1) for _ in range(repeats))
    return {"warm_up_s": warm_up, "step_s": (full - one) / (new_tokens - 1), "prefill_s": one}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench engines", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="embedded name or local path")
    parser.add_argument("--batches", default="16,64")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--arms", default="hf:float32,hf:bfloat16,vllm:float32,vllm:bfloat16")
    parser.add_argument("--out", default="runs/bench/engines")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoTokenizer

    from alignment.models import resolve_model_path

    model_path = resolve_model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    peaks = measure_peaks()
    result: dict[str, Any] = {
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "model": args.model,
        "new_tokens": args.new_tokens,
        **peaks,
        "arms": {},
    }
    batches = [int(b) for b in args.batches.split(",")]
    for arm in args.arms.split(","):
        engine = engine_for(arm, model_path, tokenizer)
        for batch in batches:
            figures = per_step(engine, rollout_query(tokenizer, batch), args.new_tokens)
            result["arms"][f"{arm} b{batch}"] = figures
            print(json.dumps({"arm": arm, "batch": batch, **figures}), flush=True)
        del engine
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    print(table(result))


def table(result: dict[str, Any]) -> str:
    base = {
        key.split(" ")[1]: value["step_s"]
        for key, value in result["arms"].items()
        if key.startswith("hf:float32")
    }
    lines = [
        f"{result['cpu']}, {result['threads']} threads; matmul peaks fp32 {result['peak_fp32_flops'] / 1e9:.0f}, "
        f"bf16 {result['peak_bf16_flops'] / 1e9:.0f} GFLOP/s; {result['model']}, {result['new_tokens']} tokens",
        "",
        "| arm | batch | ms per decoding step | x HF fp32 | first call (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, value in result["arms"].items():
        arm, batch = key.split(" ")
        speedup = base[batch] / value["step_s"] if batch in base else float("nan")
        lines.append(
            f"| {arm} | {batch[1:]} | {value['step_s'] * 1e3:.1f} | {speedup:.2f} | {value['warm_up_s']:.1f} |"
        )
    return "\n".join(lines)
