"""Where a decoding step of HF `generate` goes, against this machine's bounds (PPO's and GRPO's generation phase).

    python -m bench decode [--model smollm2-135m-instruct] [--dtype float32] [--batch 16] [--new-tokens 48]
        [--compile] [--out runs/bench/decode]

The setting is our PPO's rollout: a batch of the quickstart's PPO prompts (builtin:tasks, chat template, left
padded), sampling at temperature 0.7 over the whole vocabulary with a KV cache, every sequence forced to
`--new-tokens` (min_new_tokens) so that every step does the same work. Figures, all in one process run:
1. The bounds of one decoding step. Memory: the weights' bytes (every matmul weight, the LM head included) over
   the measured read bandwidth (best of 5 sums of a 512 MiB fp32 tensor). Compute: 2 x matmul parameters x batch
   FLOPs over the matmul peak in `--dtype` that `bench stages` measures (bench.stages.measure_peaks). The step can be no faster than the larger.
2. The step's matmuls alone: every `nn.Linear` of the model (and the LM head) applied to a (batch, in) input, one
   after the other: what the weights cost at this shape with nothing else around them.
3. `generate` per decoding step: (time of `--new-tokens` steps - time of 1 step) / (new_tokens - 1), best of 3,
   so the prompt's prefill is left out; with PPO's sampler (`TokenSampler`: inverse CDF, log-probs kept) and the
   default dynamic cache, the same with HF's sampling (`torch.multinomial`) instead, with a static cache, and
   (`--compile`) with a static cache and torch.compile (transformers' CompileConfig; its first call, which
   compiles, is reported apart).
4. A profile (torch.profiler) of the dynamic-cache step: per operator, the self time of a `--new-tokens` call
   minus that of a 1-step call, per step: where the step goes beyond its matmuls.
Results: `<out>/result.json` and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from bench.stages import measure_peaks

TEMPERATURE = 0.7
BANDWIDTH_BYTES = 512 * 1024 * 1024


def read_bandwidth(repeats: int = 5) -> float:
    """Best observed bytes/s of reading a 512 MiB fp32 tensor (a sum: one read per element, no write)."""
    import torch

    data = torch.ones(BANDWIDTH_BYTES // 4)
    data.sum()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - started)
    return BANDWIDTH_BYTES / best


def linear_layers(model: Any) -> list[Any]:
    """Every matmul weight a decoding step multiplies by: the model's `nn.Linear`s (the LM head included)."""
    import torch

    return [module for module in model.modules() if isinstance(module, torch.nn.Linear)]


def step_bounds(model: Any, batch: int, bandwidth: float, peak: float) -> dict[str, float]:
    """The memory and compute bounds of one decoding step of `batch` sequences, in seconds."""
    layers = linear_layers(model)
    parameters = sum(layer.weight.numel() for layer in layers)
    weight_bytes = sum(layer.weight.numel() * layer.weight.element_size() for layer in layers)
    return {
        "matmul_parameters": parameters,
        "weight_bytes": weight_bytes,
        "flops_per_step": 2.0 * parameters * batch,
        "memory_bound_s": weight_bytes / bandwidth,
        "compute_bound_s": 2.0 * parameters * batch / peak,
    }


def matmuls_alone(model: Any, batch: int, dtype: Any = None, repeats: int = 10) -> float:
    """Best seconds of applying every linear layer of `model` once to a (batch, in_features) input."""
    import torch

    layers = linear_layers(model)
    inputs = {layer.in_features: torch.randn(batch, layer.in_features, dtype=dtype) for layer in layers}
    best = float("inf")
    with torch.no_grad():
        for attempt in range(repeats + 2):
            started = time.perf_counter()
            for layer in layers:
                torch.nn.functional.linear(inputs[layer.in_features], layer.weight)
            if attempt >= 2:  # two warm-up passes
                best = min(best, time.perf_counter() - started)
    return best


def rollout_query(tokenizer: Any, batch: int) -> dict[str, Any]:
    """A left-padded batch of the quickstart's PPO prompts (builtin:tasks, seed 3), with the chat template."""
    from alignment.data.tasks import generate

    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": task["prompt"]}], tokenize=False, add_generation_prompt=True
        )
        for task in generate(batch, seed=3)
    ]
    tokenizer.padding_side = "left"
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def timed_generate(
    model: Any,
    query: dict[str, Any],
    tokenizer: Any,
    new_tokens: int,
    sampler: str = "ppo",
    **options: Any,
) -> float:
    """Seconds of one seeded `generate` call that samples exactly `new_tokens` tokens per sequence: with PPO's
    sampler (`TokenSampler`, inverse CDF, log-probs kept) or with HF's (`multinomial`)."""
    import torch
    from transformers import GenerationConfig

    from alignment.generation.hf import TokenSampler

    if sampler == "ppo":
        sampling: dict[str, Any] = {"do_sample": False}
        processors = [TokenSampler(TEMPERATURE)]
    else:
        sampling = {"do_sample": True, "temperature": TEMPERATURE, "top_k": 0, "top_p": 1.0}
        processors = None
    config = GenerationConfig(
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **sampling,
        **options,
    )
    torch.manual_seed(0)
    started = time.perf_counter()
    with torch.no_grad():
        output = model.generate(**query, generation_config=config, logits_processor=processors)
    elapsed = time.perf_counter() - started
    if output.shape[1] != query["input_ids"].shape[1] + new_tokens:
        raise RuntimeError(
            f"generate stopped at {output.shape[1]} columns: the step count is not what was timed"
        )
    return elapsed


def per_step(model: Any, query: dict[str, Any], tokenizer: Any, new_tokens: int, **options: Any) -> float:
    """Seconds per decoding step, the prefill left out: best of 3 of (t(new_tokens) - t(1)) / (new_tokens - 1)."""
    best = float("inf")
    for _ in range(3):
        full = timed_generate(model, query, tokenizer, new_tokens, **options)
        one = timed_generate(model, query, tokenizer, 1, **options)
        best = min(best, (full - one) / (new_tokens - 1))
    return best


def operator_times(model: Any, query: dict[str, Any], tokenizer: Any, new_tokens: int) -> dict[str, float]:
    """Per operator, self CPU seconds per decoding step: a `new_tokens` call's minus a 1-step call's, / steps."""
    import torch

    def profiled(steps: int) -> dict[str, float]:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            timed_generate(model, query, tokenizer, steps)
        return {event.key: event.self_cpu_time_total / 1e6 for event in profile.key_averages()}

    full, one = profiled(new_tokens), profiled(1)
    steps = new_tokens - 1
    return {name: (seconds - one.get(name, 0.0)) / steps for name, seconds in full.items()}


def main(argv: list[str] | None = None) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignment.models import resolve_model_path

    parser = argparse.ArgumentParser(prog="python -m bench decode", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="embedded name or local path")
    parser.add_argument(
        "--batch", type=int, default=16, help="sequences decoded together (PPO's rollout batch)"
    )
    parser.add_argument(
        "--new-tokens", type=int, default=48, help="decoding steps per call (PPO's max_new_tokens)"
    )
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16"], help="weights and compute"
    )
    parser.add_argument("--compile", action="store_true", help="also time a static cache with torch.compile")
    parser.add_argument("--top", type=int, default=8, help="operators listed from the profile")
    parser.add_argument("--out", default="runs/bench/decode")
    args = parser.parse_args(argv)
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2 (one step is subtracted to leave the prefill out)")

    path = resolve_model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    dtype = getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    query = rollout_query(tokenizer, args.batch)
    result: dict[str, Any] = {
        "model": args.model,
        "batch": args.batch,
        "new_tokens": args.new_tokens,
        "prompt_columns": int(query["input_ids"].shape[1]),
        "threads": torch.get_num_threads(),
        "read_bandwidth_bytes_per_s": read_bandwidth(),
        "dtype": args.dtype,
        "peak_flops": measure_peaks()["peak_fp32_flops" if args.dtype == "float32" else "peak_bf16_flops"],
    }
    result.update(step_bounds(model, args.batch, result["read_bandwidth_bytes_per_s"], result["peak_flops"]))
    result["matmuls_alone_s"] = matmuls_alone(model, args.batch, dtype)
    steps = {"dynamic cache": per_step(model, query, tokenizer, args.new_tokens)}
    steps["dynamic cache, HF's multinomial sampling"] = per_step(
        model, query, tokenizer, args.new_tokens, sampler="multinomial"
    )
    steps["static cache"] = per_step(model, query, tokenizer, args.new_tokens, cache_implementation="static")
    if args.compile:
        from transformers import CompileConfig

        compile_config = CompileConfig(fullgraph=False, dynamic=False)
        compile_config._compile_all_devices = True  # transformers compiles on accelerators only, unless told
        options = {"cache_implementation": "static", "compile_config": compile_config}
        result["compile_first_call_s"] = timed_generate(model, query, tokenizer, args.new_tokens, **options)
        steps["static cache + torch.compile"] = per_step(model, query, tokenizer, args.new_tokens, **options)
    result["step_s"] = steps
    operators = operator_times(model, query, tokenizer, args.new_tokens)
    result["operators_s_per_step"] = dict(sorted(operators.items(), key=lambda item: -item[1])[: args.top])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))


def table(result: dict[str, Any]) -> str:
    """The Markdown summary: bounds, the matmuls alone, each way of generating, and the profile."""
    bound = max(result["memory_bound_s"], result["compute_bound_s"])
    gflops = result["flops_per_step"] / 1e9
    lines = [
        f"{result['model']}, batch {result['batch']}, {result['new_tokens']} steps after a "
        f"{result['prompt_columns']}-column prompt, {result['threads']} threads; {result['dtype']} matmul "
        f"peak {result['peak_flops'] / 1e9:.1f} GFLOP/s, read bandwidth "
        f"{result['read_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s",
        "",
        "| one decoding step | ms | x the bound |",
        "|---|---:|---:|",
        f"| memory bound ({result['weight_bytes'] / 1e6:.0f} MB of weights) | "
        f"{1e3 * result['memory_bound_s']:.1f} | {result['memory_bound_s'] / bound:.2f} |",
        f"| compute bound ({gflops:.2f} GFLOP at the peak) | {1e3 * result['compute_bound_s']:.1f} | "
        f"{result['compute_bound_s'] / bound:.2f} |",
        f"| its matmuls alone | {1e3 * result['matmuls_alone_s']:.1f} | {result['matmuls_alone_s'] / bound:.2f} |",
    ]
    for name, seconds in result["step_s"].items():
        lines.append(f"| `generate`, {name} | {1e3 * seconds:.1f} | {seconds / bound:.2f} |")
    if "compile_first_call_s" in result:
        lines.append(f"\nFirst call with torch.compile (compiling): {result['compile_first_call_s']:.1f} s.")
    lines += ["", "| operator (dynamic cache, profiled) | ms per step |", "|---|---:|"]
    lines += [
        f"| `{name}` | {1e3 * seconds:.1f} |" for name, seconds in result["operators_s_per_step"].items()
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
