"""Per-stage throughput against this machine's measured matmul peak (MFU), ours beside plain TRL, in one process run.

    python -m bench stages [--models tiny,smollm2] [--stages sft,reward,dpo,ppo,grpo,rloo] [--steps 8] [--plain-trl]
        [--accelerate-config configs/accelerate/zero2.yaml] [--out runs/bench/stages] [key=value ...]

1. The limit: dense matmul throughput, measured first. On CPU: fp32 (best of 5 timed 2048^3 products) and bf16
   (512^3: CPUs without bf16 units run it orders of magnitude slower). On a CUDA GPU: bf16 and fp32 (best of 5
   timed bursts of 8192^3 products, synchronised). MFU is taken against the peak of the dtype the stages compute
   in: bf16 on a GPU (the stages train in bf16 there), fp32 on CPU.
2. For each model (`tiny`: the smoke pipeline's tiny random model; `smollm2`: the quickstart's SmolLM2-135M-Instruct
   with LoRA; `llama0.6b`: a random ~0.63B Llama in bf16, for GPUs, built by bench/model.py: bench/gpu.sh) and stage, our stage with the
   pipeline's own section for `--steps` optimizer steps (PPO: iterations), W&B off, no checkpoints, `--force` (a
   finished artifact in --out is re-run, never reused). SFT first: the later stages start from its artifact. Run
   in this process's python (`alignment stage`), or with `--accelerate-config` under `accelerate launch` on one
   process (DeepSpeed ZeRO-2/3 on one GPU). Figures from each stage's own log over its training loop (model
   loading excluded): TRL's `train_runtime`, `num_tokens` (tokens fed to the policy) and samples/s; for our PPO
   the sum of its per-iteration wall times and the split into generation, rollout forward passes, scoring and
   training. Peak resident memory of the stage process from `/usr/bin/time`.
3. `--plain-trl`: after each TRL-backed stage (sft, reward, dpo; grpo with a rule reward), the same run as a plain
   TRL script (bench/peers/plain_trl.py, its own process, the same python and launcher) on the same weights, rows
   (our data layer's output, exported to `<out>/<model>/plain/<stage>/rows.jsonl`) and TRL config values (our
   resolved stage config). The ratio ours / plain tokens/s is reported only when both runs did the same work:
   token counts (samples where a log has none) within 1%; otherwise the table says why there is none.
4. MFU = model FLOPs of the run / its training-loop seconds / the peak; how FLOPs are counted per stage (policy,
   critic, reference and generation passes for PPO and GRPO) is in bench/flops.py.
Results: `<out>/result.json` and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.flops import MatmulParameters, grpo_flops, matmul_parameters, ppo_phase_flops, trl_stage_flops

REPO = Path(__file__).resolve().parents[1]
MODELS = {
    "tiny": "configs/pipelines/smoke.yaml",
    "smollm2": "configs/pipelines/quickstart.yaml",
    "llama0.6b": "bench/configs/random-llama-0.6b.yaml",
}
BENCH_BUILT_MODELS = {"llama0.6b": "bench.model"}
"""Models the benchmarks build themselves (not embedded in the product): the module whose `prepare()` builds one;
its folder becomes the run's `model.name_or_path`."""
STAGES = ("sft", "reward", "dpo", "ppo", "grpo", "rloo")
SAMPLING_STAGES = ("grpo", "rloo")
"""TRL's online trainers: generation, completion tokens and FLOPs counted alike (RLOOTrainer is built as GRPOTrainer)."""
PLAIN_STAGES = ("sft", "reward", "dpo", "grpo")
PLAIN_SCRIPT = REPO / "bench" / "peers" / "plain_trl.py"
SAME_WORK_TOLERANCE = 0.01
RUN_PLACE_KEYS = frozenset({"output_dir", "report_to", "run_name", "logging_dir"})
"""TRL config keys that say where a run writes, not what it computes: each side sets its own."""
ALWAYS_MIRRORED = frozenset(
    {
        "per_device_train_batch_size", "gradient_accumulation_steps", "max_length", "packing", "padding_free",
        "learning_rate", "lr_scheduler_type", "warmup_steps", "max_steps", "seed", "bf16", "use_cpu",
        "gradient_checkpointing", "activation_checkpointing", "num_generations", "max_completion_length", "beta",
        "loss_type", "temperature",
    }
)  # fmt: skip
"""TRL config keys handed to the plain arm with our resolved value even when our section leaves them unset."""


# ---------------------------------------------------------------------------------------------- the limit
def matmul_peak(dtype: Any, size: int = 2048, repeats: int = 5, device: str = "cpu", burst: int = 1) -> float:
    """Best observed FLOP/s of a dense (size x size) @ (size x size) product in `dtype` on `device`, over
    `repeats` timed bursts of `burst` products (a GPU is synchronised before and after each burst)."""
    import torch

    def synchronize() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)

    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    out = torch.matmul(a, b)  # warm-up: thread pool, allocator, kernel selection
    synchronize()
    best = float("inf")
    for _ in range(repeats):
        synchronize()
        started = time.perf_counter()
        for _ in range(burst):
            torch.matmul(a, b, out=out)
        synchronize()
        best = min(best, (time.perf_counter() - started) / burst)
    del a, b, out
    return 2 * size**3 / best


def measure_peaks() -> dict[str, Any]:
    """The matmul peaks of this machine, and which one MFU is taken against."""
    import torch

    if torch.cuda.is_available():
        peaks = {
            "device": torch.cuda.get_device_name(0),
            "peak_bf16_flops": matmul_peak(torch.bfloat16, 8192, device="cuda", burst=10),
            "peak_fp32_flops": matmul_peak(torch.float32, 8192, device="cuda", burst=3),
            "mfu_against": "bf16",
        }
        torch.cuda.empty_cache()
        return peaks
    return {
        "device": f"cpu ({torch.get_num_threads()} threads)",
        "peak_fp32_flops": matmul_peak(torch.float32),
        "peak_bf16_flops": matmul_peak(torch.bfloat16, size=512),  # bf16 matmul on CPUs without AMX is slow
        "mfu_against": "fp32",
    }


def model_size(model_name: str) -> MatmulParameters:
    """The model's matmul parameters, counted on the meta device (no weights loaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from alignment.models import resolve_model_path

    path = resolve_model_path(model_name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    return matmul_parameters(model)


# --------------------------------------------------------------------------------------------- commands
def launcher(accelerate_config: str | None, num_processes: int) -> list[str]:
    """How a process is started: this python, or `accelerate launch` with a distribution config."""
    if accelerate_config is None:
        return [sys.executable]
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", accelerate_config,
        "--num_processes", str(num_processes),
    ]  # fmt: skip


def stage_overrides(stage: str, out: Path, steps: int, extra: tuple[str, ...] = ()) -> list[str]:
    """The pipeline overrides of a benchmarked stage run: the user's `key=value`s, then the bench's own."""
    return [
        *extra, f"output_dir={out}", "tracking.mode=disabled", f"{stage}.max_steps={steps}", f"{stage}.logging_steps=1",
        f"{stage}.save_steps=100000",
    ]  # fmt: skip


def stage_command(
    stage: str,
    pipeline_path: str,
    out: Path,
    steps: int,
    accelerate_config: str | None,
    num_processes: int,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """Our stage: `alignment stage` in this python, or the stage module under `accelerate launch`."""
    entry = (
        ["-m", "alignment.cli", "stage", stage]
        if accelerate_config is None
        else ["-m", f"alignment.stages.{stage}"]
    )
    return [
        *launcher(accelerate_config, num_processes), *entry, "--config", pipeline_path, "--force",
        *stage_overrides(stage, out, steps, extra),
    ]  # fmt: skip


def plain_command(directory: Path, accelerate_config: str | None, num_processes: int) -> list[str]:
    return [
        *launcher(accelerate_config, num_processes), str(PLAIN_SCRIPT), "--settings",
        str(directory / "settings.json"), "--out", str(directory),
    ]  # fmt: skip


def run_timed(command: list[str], log: Path) -> dict[str, float]:
    """Run `command` under /usr/bin/time; its wall seconds and peak resident memory (GiB). Exits on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    rss_file = log.with_suffix(".maxrss")
    print(f"$ {' '.join(command)}", flush=True)
    started = time.perf_counter()
    with log.open("w") as handle:
        code = subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", str(rss_file), *command],
            cwd=REPO,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=os.environ,
        ).returncode
    wall = time.perf_counter() - started
    if code:
        raise SystemExit(f"failed ({code}); log: {log}\n" + "\n".join(log.read_text().splitlines()[-20:]))
    return {"process_wall_s": wall, "peak_rss_gib": int(rss_file.read_text().split()[-1]) / 2**20}


# ------------------------------------------------------------------------------------------ log figures
def trl_log_figures(history: list[dict[str, Any]]) -> dict[str, Any]:
    """A TRL trainer's log: training-loop seconds, samples, samples/s and tokens (None when it logs none)."""
    final = next((entry for entry in reversed(history) if "train_runtime" in entry), None)
    if final is None:
        raise ValueError("the log has no train_runtime entry (did the training loop finish?)")
    tokens = max((entry["num_tokens"] for entry in history if "num_tokens" in entry), default=None)
    samples_per_s = final.get("train_samples_per_second")
    return {
        "train_runtime_s": final["train_runtime"],
        "samples_per_s": samples_per_s,
        "samples": round(samples_per_s * final["train_runtime"]) if samples_per_s is not None else None,
        "num_tokens": tokens,
    }


PPO_PHASES = {
    "generation": "time/generation_s",
    "rollout_forward": "time/forward_s",
    "scoring": "time/scoring_s",
    "training": "time/training_s",
}


def ppo_log_figures(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Our PPO trainer's log (one entry per iteration, no train_runtime): the loop time is the sum of the
    iterations' wall times; samples and response tokens are rates x iteration times; num_tokens is cumulative
    (query + response tokens)."""
    iterations = [entry for entry in history if "time/iteration_s" in entry]
    if not iterations:
        raise ValueError("the PPO log has no iteration entries (time/iteration_s)")
    seconds = sum(entry["time/iteration_s"] for entry in iterations)
    samples = sum(entry["throughput/samples_per_s"] * entry["time/iteration_s"] for entry in iterations)
    response_tokens = sum(
        entry["throughput/response_tokens_per_s"] * entry["time/iteration_s"] for entry in iterations
    )
    return {
        "train_runtime_s": seconds,
        "samples_per_s": samples / seconds,
        "samples": round(samples),
        "num_tokens": iterations[-1]["num_tokens"],
        "response_tokens": round(response_tokens),
        "phases_s": {name: sum(entry[key] for entry in iterations) for name, key in PPO_PHASES.items()},
    }


def grpo_completion_tokens(history: list[dict[str, Any]], generation_batch_size: int) -> float:
    """Completion tokens of a TRL GRPO run logged every step: each generation logs the mean completion length of
    its `generation_batch_size` completions (a step that reuses a buffered generation logs none)."""
    return sum(
        entry["completions/mean_length"] * generation_batch_size
        for entry in history
        if "completions/mean_length" in entry and "train_runtime" not in entry
    )


def same_work(ours: dict[str, Any], plain: dict[str, Any]) -> tuple[bool, str]:
    """Did both runs do the same work? Token counts within 1% (samples when a log has no token count)."""
    key = "num_tokens" if ours.get("num_tokens") and plain.get("num_tokens") else "samples"
    a, b = ours.get(key), plain.get(key)
    if not a or not b:
        return False, f"no {key} in {'our' if not a else 'the plain'} log: no ratio"
    difference = abs(a - b) / max(a, b)
    if difference > SAME_WORK_TOLERANCE:
        return False, (
            f"{key} differ: ours {a:,.0f}, plain TRL {b:,.0f} ({100 * difference:.1f}% > "
            f"{100 * SAME_WORK_TOLERANCE:.0f}%): not the same work, no ratio"
        )
    return True, f"{key} match: ours {a:,.0f}, plain TRL {b:,.0f}"


# ------------------------------------------------------------------------------------------ plain TRL arm
def _plain_value(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain_value(v) for k, v in value.items()}
    return value


def plain_unsupported(pipeline: Any, stage: str, args: Any) -> str | None:
    """Why the plain TRL arm cannot mirror this stage's run, or None."""
    if stage == "ppo":
        return "ppo is our own trainer: TRL 1.16 has none to compare with"
    if stage not in PLAIN_STAGES:
        return f"{stage}: the plain arm mirrors {', '.join(PLAIN_STAGES)} only"
    method = (args.model or pipeline.model).tuning.method
    if method not in ("full", "lora"):
        return f"model.tuning.method={method}: the plain arm mirrors full and lora only"
    if getattr(args, "reference_from", None) is not None:
        return "dpo.reference_from: the plain arm mirrors the default reference (the init model) only"
    if getattr(args, "use_margin", False):
        return "reward.use_margin: the plain arm mirrors the plain Bradley-Terry loss only"
    if stage == "grpo" and not args.reward_model.startswith("rule:"):
        return f"grpo.reward_model={args.reward_model}: the plain arm mirrors rule rewards only"
    return None


def plain_trl_config(pipeline: Any, stage: str, args: Any) -> dict[str, Any]:
    """The TRL config keyword arguments of the plain arm: every key of TRL's config class that our stage's section
    sets, the device flags and `ALWAYS_MIRRORED`, with the values of our resolved stage config `args`."""
    import trl

    from alignment.stages.common import device_defaults

    base = {"sft": trl.SFTConfig, "reward": trl.RewardConfig, "dpo": trl.DPOConfig, "grpo": trl.GRPOConfig}[
        stage
    ]
    trl_fields = {f.name for f in dataclasses.fields(base) if f.init}
    explicit = set(pipeline.stage_sections.get(stage, {})) | ALWAYS_MIRRORED | set(device_defaults())
    return {key: _plain_value(getattr(args, key)) for key in sorted((explicit & trl_fields) - RUN_PLACE_KEYS)}


def init_model_path(pipeline: Any, stage: str, args: Any) -> str:
    """The weights our stage started from (as alignment.stages.common.resolve_init_model decides)."""
    from alignment import artifacts
    from alignment.models import resolve_model_path

    model_cfg = args.model or pipeline.model
    init_from = "model" if stage == "sft" else args.init_from
    if init_from == "model":
        return resolve_model_path(model_cfg.name_or_path)
    source = pipeline.stage_output_dir("sft") if init_from == "sft" else Path(init_from)
    if artifacts.read_manifest(source).get("model_kind") == "adapter":
        return str(Path(pipeline.output_dir) / ".work" / stage / "init_model")  # merged once by our stage
    return str(source)


def trainer_rows(stage: str, rows: list[dict[str, Any]], args: Any) -> list[dict[str, Any]]:
    """What our stage handed its TRL trainer, from the snapshot rows of our data layer."""
    if stage == "sft":
        from alignment.stages.sft import _columns

        return _columns(rows)
    if stage == "reward":
        from alignment.stages.reward import _columns

        return _columns(rows, args.use_margin)
    if stage == "dpo":
        from alignment.stages.dpo import _columns

        return _columns(rows)
    from alignment.rl.rewards import rows_for_trl

    return rows_for_trl(rows)


def write_plain_settings(pipeline: Any, stage: str, args: Any, directory: Path) -> Path:
    """rows.jsonl (exported from our stage's data snapshot) and settings.json for bench/peers/plain_trl.py."""
    from alignment.models import torch_dtype

    directory.mkdir(parents=True, exist_ok=True)
    snapshot = Path(pipeline.output_dir) / ".work" / stage / "data" / "train.jsonl"
    rows = [json.loads(line) for line in snapshot.read_text().splitlines() if line]
    rows_file = directory / "rows.jsonl"
    rows_file.write_text("".join(json.dumps(row) + "\n" for row in trainer_rows(stage, rows, args)))
    tuning = (args.model or pipeline.model).tuning
    settings = {
        "stage": stage,
        "model": init_model_path(pipeline, stage, args),
        "tokenizer": str(pipeline.stage_output_dir(stage)),
        "dtype": str(torch_dtype((args.model or pipeline.model).dtype)).removeprefix("torch."),
        "rows": str(rows_file),
        "trl_config": plain_trl_config(pipeline, stage, args),
        "lora": None
        if tuning.method == "full"
        else {
            "r": tuning.lora_r,
            "alpha": tuning.lora_alpha,
            "dropout": tuning.lora_dropout,
            "target_modules": tuning.target_modules,
        },
    }
    path = directory / "settings.json"
    path.write_text(json.dumps(settings, indent=2) + "\n")
    return path


# ------------------------------------------------------------------------------------------------- FLOPs
def run_flops(
    stage: str, method: str, size: MatmulParameters, figures: dict[str, Any], args: Any
) -> float | None:
    tokens = figures.get("num_tokens")
    if not tokens:
        return None
    if stage == "ppo":
        return sum(ppo_phases(size, method, figures, args).values())
    if stage in SAMPLING_STAGES:
        generate_every = args.steps_per_generation * args.num_iterations
        return grpo_flops(
            size,
            method,
            tokens,
            figures["completion_tokens"],
            args.num_iterations,
            args.beta,
            # GRPO recomputes the sampling policy's log-probs only when its generation does not line up with the
            # optimiser steps; RLOO always does (its KL-shaped reward needs them).
            old_logprob_pass=stage == "rloo" or args.gradient_accumulation_steps % generate_every != 0,
        )
    return trl_stage_flops(stage, method, size, tokens)


def ppo_phases(size: MatmulParameters, method: str, figures: dict[str, Any], args: Any) -> dict[str, float]:
    """Model FLOPs of each phase of a PPO run's loop (bench/flops.py), from its logged tokens and its config."""
    return ppo_phase_flops(
        size,
        method,
        figures["num_tokens"],
        figures["response_tokens"],
        args.ppo_epochs,
        args.critic_trainable_last_n_blocks,
        args.cache_critic_trunk,
        old_logprob_pass=not args.logprobs_from_generation,
    )


def rates(figures: dict[str, Any], flops: float | None, peak: float) -> dict[str, Any]:
    seconds = figures["train_runtime_s"]
    tokens = figures.get("num_tokens")
    return {
        "tokens_per_s": tokens / seconds if tokens else None,
        "model_flops": flops,
        "mfu": flops / seconds / peak if flops else None,
    }


# -------------------------------------------------------------------------------------------------- main
def model_overrides(model: str) -> list[str]:
    """`model.name_or_path=<folder>` for a model the benchmarks build (built first if it is not there yet)."""
    if model not in BENCH_BUILT_MODELS:
        return []
    import importlib

    return [f"model.name_or_path={importlib.import_module(BENCH_BUILT_MODELS[model]).prepare()}"]


def measure_stage(
    model: str, stage: str, cli: argparse.Namespace, size: MatmulParameters, peak: float
) -> dict[str, Any]:
    from alignment.config import load_pipeline, stage_args
    from alignment.stages.common import device_defaults

    out = Path(cli.out) / model
    pipeline_path = MODELS[model]
    overrides = (*model_overrides(model), *cli.overrides)
    pipeline = load_pipeline(pipeline_path, stage_overrides(stage, out, cli.steps, overrides))
    args = stage_args(pipeline, stage, output_dir=str(out / ".work" / stage), **device_defaults())
    method = (args.model or pipeline.model).tuning.method
    command = stage_command(
        stage, pipeline_path, out, cli.steps, cli.accelerate_config, cli.num_processes, overrides
    )
    process = run_timed(command, out / "logs" / f"{stage}.log")
    history = json.loads((out / stage / "log_history.json").read_text())
    figures = ppo_log_figures(history) if stage == "ppo" else trl_log_figures(history)
    if stage in SAMPLING_STAGES:
        figures["completion_tokens"] = round(grpo_completion_tokens(history, args.generation_batch_size))
    row: dict[str, Any] = {"model": model, "stage": stage, "method": method, **figures, **process}
    row |= rates(figures, run_flops(stage, method, size, figures, args), peak)
    if stage == "ppo":  # each phase against the peak: the training phase has its own goal
        flops = ppo_phases(size, method, figures, args)
        row["phase_mfu"] = {
            name: flops[name] / seconds / peak for name, seconds in figures["phases_s"].items()
        }
    if cli.plain_trl:
        row["plain_trl"] = measure_plain(pipeline, stage, args, out, cli, size, method, peak, figures)
    return row


def measure_plain(
    pipeline: Any,
    stage: str,
    args: Any,
    out: Path,
    cli: argparse.Namespace,
    size: MatmulParameters,
    method: str,
    peak: float,
    ours: dict[str, Any],
) -> dict[str, Any]:
    reason = plain_unsupported(pipeline, stage, args)
    if reason is not None:
        print(f"[plain-trl {stage}] skipped: {reason}", flush=True)
        return {"skipped": reason}
    directory = out / "plain" / stage
    write_plain_settings(pipeline, stage, args, directory)
    process = run_timed(
        plain_command(directory, cli.accelerate_config, cli.num_processes), directory / "run.log"
    )
    history = json.loads((directory / "log_history.json").read_text())
    figures = trl_log_figures(history)
    if stage == "grpo":
        figures["completion_tokens"] = round(grpo_completion_tokens(history, args.generation_batch_size))
    plain = {**figures, **process, **rates(figures, run_flops(stage, method, size, figures, args), peak)}
    matched, message = same_work(ours, plain)
    print(f"[plain-trl {stage}] {message}", flush=True)
    plain["same_work"] = message
    ours_rate = ours["num_tokens"] / ours["train_runtime_s"] if ours.get("num_tokens") else None
    plain["ratio_ours_over_plain"] = ours_rate / plain["tokens_per_s"] if matched and ours_rate else None
    return plain


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench stages", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny,smollm2", help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--stages", default="sft,reward,dpo", help=f"comma-separated, of {', '.join(STAGES)}")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per stage (PPO: iterations)")
    parser.add_argument(
        "--plain-trl", action="store_true", help="also run each TRL stage as a plain TRL script"
    )
    parser.add_argument(
        "--accelerate-config",
        help="run each stage under accelerate launch with this config (e.g. zero3.yaml)",
    )
    parser.add_argument("--num-processes", type=int, default=1, help="with --accelerate-config")
    parser.add_argument("--out", default="runs/bench/stages")
    parser.add_argument(
        "overrides", nargs="*", help="key=value pipeline overrides for every model (e.g. sft.packing=true)"
    )
    cli = parser.parse_args(argv)
    models = [m for m in cli.models.split(",") if m]
    stages = [s for s in cli.stages.split(",") if s]
    unknown = [m for m in models if m not in MODELS] + [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown model or stage {unknown}; models: {list(MODELS)}, stages: {list(STAGES)}")

    from alignment.config import load_pipeline

    peaks = measure_peaks()
    peak = peaks[f"peak_{peaks['mfu_against']}_flops"]
    result: dict[str, Any] = {
        "command": "python -m bench stages " + " ".join(argv if argv is not None else sys.argv[2:]),
        "date": time.strftime("%Y-%m-%d"),
        "accelerate_config": cli.accelerate_config,
        **peaks,
        "runs": [],
    }
    print(
        f"matmul peak on {peaks['device']}: fp32 {peaks['peak_fp32_flops'] / 1e9:,.1f} GFLOP/s, "
        f"bf16 {peaks['peak_bf16_flops'] / 1e9:,.1f}; MFU against {peaks['mfu_against']}",
        flush=True,
    )
    for model in models:
        overrides = [*model_overrides(model), *cli.overrides]
        size = model_size(load_pipeline(MODELS[model], overrides).model.name_or_path)
        for stage in stages:
            row = measure_stage(model, stage, cli, size, peak)
            row["matmul_parameters"] = dataclasses.asdict(size)
            result["runs"].append(row)
            print(json.dumps(row), flush=True)
    out = Path(cli.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))


# ------------------------------------------------------------------------------------------------- table
def _number(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(result: dict[str, Any]) -> str:
    peak = result.get("mfu_against", "fp32")
    lines = [
        f"| model | stage | tuning | tokens/s | samples/s | MFU ({peak} peak) | train loop s | peak RSS GiB "
        "| plain TRL tokens/s | ours / plain |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for r in result["runs"]:
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        plain = r.get("plain_trl") or {}
        ratio = plain.get("ratio_ours_over_plain")
        if plain.get("skipped") or (plain and ratio is None):
            notes.append(f"- {r['model']} {r['stage']}: {plain.get('skipped') or plain.get('same_work')}")
        lines.append(
            f"| {r['model']} | {r['stage']} | {r['method']} | {_number(r['tokens_per_s'], ',.0f')} "
            f"| {_number(r['samples_per_s'], '.2f')} | {mfu} | {r['train_runtime_s']:.1f} | {r['peak_rss_gib']:.2f} "
            f"| {_number(plain.get('tokens_per_s'), ',.0f')} | {_number(ratio, '.2f')} |"
        )
    for r in result["runs"]:
        if "phases_s" in r:
            split = ", ".join(
                f"{name} {seconds:.1f} s (MFU {100 * r['phase_mfu'][name]:.1f}%)"
                for name, seconds in r["phases_s"].items()
            )
            notes.append(f"- {r['model']} ppo loop {r['train_runtime_s']:.1f} s: {split}")
    return "\n".join(lines + ([""] + notes if notes else []))
