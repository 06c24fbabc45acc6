"""Where a TRL-backed stage's training step goes: torch.profiler over a few optimiser steps, by operator class.

    python -m bench profile [--stage sft] [--config configs/pipelines/quickstart.yaml] [--wait 1] [--active 2]
        [--top 12] [--trace] [--out runs/bench/profile] [key=value ...]

The stage (sft, reward or dpo) is built in this process by its own `build` (the same trainer `alignment stage`
runs), with the pipeline's section and the `key=value` overrides, W&B off. A callback leaves the first `--wait`
optimiser steps unprofiled (the allocator and the data pipeline warm up there), then records `--active` steps
with torch.profiler (CPU activity, plus CUDA on a GPU; operator FLOPs counted by the profiler for matmuls), and
stops training. Reward and DPO start from the pipeline's SFT artifact in `--out`; when there is none, one SFT step
is trained first to make one.

Figures, all from the profiled steps:
1. Wall seconds per step, the split forward+backward / optimiser (the trainer's own callback hooks), the tokens the
   trainer counted, model FLOPs (bench/flops.py) and MFU against the matmul peak measured at the start.
2. Self time by operator class: matmuls (with the FLOP rate they ran at, from the profiler's own FLOP counts),
   attention, the softmax and log-prob work over the vocabulary, the optimiser, copies and layout, the rest
   (elementwise). Each operator is counted once, by its own (self) time, so the classes add up to the profile.
3. The `--top` operators by self time (`--shapes`: per operator and input shapes).
Results: `<out>/result.json` (and `<out>/trace.json`, a Chrome trace, with `--trace`); a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from bench.flops import trl_stage_flops
from bench.stages import measure_peaks, model_size, stage_overrides

PROFILED_STAGES = ("sft", "reward", "dpo")
CLASSES = (
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation")),
    (
        "attention",
        ("scaled_dot_product", "flash_attention", "efficient_attention", "aten::_softmax_backward"),
    ),
    (
        "softmax / log-probs over the vocabulary",
        ("softmax", "logsumexp", "nll_loss", "cross_entropy", "aten::exp", "aten::amax", "aten::gather"),
    ),
    ("optimizer", ("_foreach_", "adam", "aten::lerp", "aten::addcdiv", "aten::addcmul")),
    (
        "copies and layout",
        (
            "aten::copy_",
            "aten::clone",
            "aten::cat",
            "aten::_to_copy",
            "aten::fill_",
            "aten::zero_",
            "aten::index",
        ),
    ),
)
"""Operator class <- substrings of operator names, first match wins; everything else is `other (elementwise)`.
`aten::_softmax_backward` sits under attention because the eager attention path is the only softmax with a backward
here (the LM head's log-probs are TRL's chunked kernel, which writes its own gradient)."""
OTHER = "other (elementwise)"


def operator_class(name: str) -> str:
    for label, needles in CLASSES:
        if any(needle in name for needle in needles):
            return label
    return OTHER


def summarise(events: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    """Per-operator self seconds and FLOPs (the profiler's `key_averages`) -> per-class seconds per step, their
    share, and the FLOP rate of the matmul class."""
    total = sum(event["self_s"] for event in events)
    classes: dict[str, dict[str, float]] = {}
    for event in events:
        entry = classes.setdefault(operator_class(event["name"]), {"self_s": 0.0, "flops": 0.0})
        entry["self_s"] += event["self_s"]
        entry["flops"] += event["flops"]
    out = {}
    for label, entry in sorted(classes.items(), key=lambda item: -item[1]["self_s"]):
        out[label] = {
            "s_per_step": entry["self_s"] / steps,
            "share": entry["self_s"] / total if total else 0.0,
            "flop_rate": entry["flops"] / entry["self_s"] if entry["flops"] and entry["self_s"] else None,
        }
    return {"profiled_self_s": total, "classes": out}


def profiler_callback(trainer: Any, wait: int, active: int, trace: Path | None, shapes: bool = False) -> Any:
    """Profiles optimiser steps wait+1 .. wait+active, times their phases, then stops the training."""
    import torch
    from transformers import TrainerCallback

    class ProfileSteps(TrainerCallback):
        def __init__(self) -> None:
            self.profile: Any = None
            self.figures: dict[str, Any] = {"forward_backward_s": 0.0, "optimizer_s": 0.0}
            self.marks: dict[str, float] = {}

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == wait and self.profile is None:
                activities = [torch.profiler.ProfilerActivity.CPU]
                if torch.cuda.is_available():
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
                self.profile = torch.profiler.profile(
                    activities=activities, with_flops=True, record_shapes=shapes
                )
                self.profile.__enter__()
                self.figures["tokens_before"] = trainer._total_train_tokens
                self.marks["start"] = time.perf_counter()
            self.marks["step"] = time.perf_counter()

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.profile is not None:
                self.marks["pre_optimizer"] = time.perf_counter()
                self.figures["forward_backward_s"] += self.marks["pre_optimizer"] - self.marks["step"]

        def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.profile is not None:
                self.figures["optimizer_s"] += time.perf_counter() - self.marks["pre_optimizer"]

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.profile is None or state.global_step < wait + active:
                return
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.figures["wall_s"] = time.perf_counter() - self.marks["start"]
            self.figures["tokens"] = trainer._total_train_tokens - self.figures.pop("tokens_before")
            self.profile.__exit__(None, None, None)
            self.figures["events"] = [
                {
                    "name": event.key,
                    "shapes": str(event.input_shapes) if shapes else "",
                    "self_s": event.self_cpu_time_total / 1e6,
                    "flops": float(event.flops or 0),
                }
                for event in self.profile.key_averages(group_by_input_shape=shapes)
            ]
            if trace is not None:
                self.profile.export_chrome_trace(str(trace))
            control.should_training_stop = True

    return ProfileSteps()


def ensure_sft_artifact(pipeline_path: str, out: Path, extra: tuple[str, ...]) -> None:
    """Reward and DPO start from the SFT artifact: train one SFT step into `out` when there is none."""
    from alignment import artifacts
    from alignment.config import load_pipeline
    from alignment.stages import sft

    pipeline = load_pipeline(pipeline_path, stage_overrides("sft", out, 1, extra))
    if not artifacts.is_complete(pipeline.stage_output_dir("sft")):
        print("[profile] no SFT artifact in --out: training one SFT step first", flush=True)
        sft.train(pipeline)


def profile_stage(cli: argparse.Namespace) -> dict[str, Any]:
    import importlib

    from alignment.config import load_pipeline
    from alignment.stages.common import StageRun

    out = Path(cli.out)
    extra = tuple(cli.overrides)
    steps = cli.wait + cli.active
    pipeline = load_pipeline(cli.config, stage_overrides(cli.stage, out, steps, extra))
    if cli.stage != "sft":
        ensure_sft_artifact(cli.config, out, extra)
    module = importlib.import_module(f"alignment.stages.{cli.stage}")
    run = StageRun(pipeline, cli.stage, restart=True)
    trainer, _ = module.build(pipeline, run)
    trace = out / "trace.json" if cli.trace else None
    callback = profiler_callback(trainer, cli.wait, cli.active, trace, shapes=cli.shapes)
    trainer.add_callback(callback)
    trainer.train()
    if "events" not in callback.figures:
        raise SystemExit(
            f"[profile] training ended before step {steps} (--wait {cli.wait} + --active {cli.active}), "
            "so nothing was profiled; see the trainer's log above for why it stopped"
        )
    figures = callback.figures
    args = trainer.args
    model_name = (args.model or pipeline.model).name_or_path
    method = (args.model or pipeline.model).tuning.method
    flops = trl_stage_flops(cli.stage, method, model_size(model_name), figures["tokens"])
    return {
        "stage": cli.stage,
        "method": method,
        "steps": cli.active,
        "wall_s_per_step": figures["wall_s"] / cli.active,
        "forward_backward_s_per_step": figures["forward_backward_s"] / cli.active,
        "optimizer_s_per_step": figures["optimizer_s"] / cli.active,
        "tokens": figures["tokens"],
        "model_flops": flops,
        "events": figures["events"],
        **summarise(figures["events"], cli.active),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", default="sft", choices=PROFILED_STAGES)
    parser.add_argument("--config", default="configs/pipelines/quickstart.yaml")
    parser.add_argument("--wait", type=int, default=1, help="optimiser steps run before profiling")
    parser.add_argument("--active", type=int, default=2, help="optimiser steps profiled")
    parser.add_argument("--top", type=int, default=12, help="operators listed by self time")
    parser.add_argument("--trace", action="store_true", help="also write <out>/trace.json (Chrome trace)")
    parser.add_argument("--shapes", action="store_true", help="list the top operators per input shape")
    parser.add_argument("--out", default="runs/bench/profile")
    parser.add_argument("overrides", nargs="*", help="pipeline overrides, key=value")
    cli = parser.parse_args(argv)
    if cli.active < 1 or cli.wait < 0:
        parser.error("--active must be at least 1 and --wait at least 0")

    peaks = measure_peaks()
    peak = peaks[f"peak_{peaks['mfu_against']}_flops"]
    result = {"peaks": peaks, "peak": peak, **profile_stage(cli)}
    result["mfu"] = result["model_flops"] / (result["wall_s_per_step"] * cli.active) / peak
    Path(cli.out).mkdir(parents=True, exist_ok=True)
    (Path(cli.out) / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    print(table(result, cli.top))


def table(result: dict[str, Any], top: int) -> str:
    """The Markdown summary: the step, its split, MFU, the operator classes and the top operators."""
    step = result["wall_s_per_step"]
    lines = [
        f"{result['stage']} ({result['method']}), {result['steps']} profiled steps: {step:.2f} s per step "
        f"(forward+backward {result['forward_backward_s_per_step']:.2f}, optimizer {result['optimizer_s_per_step']:.2f}), "
        f"{result['tokens']} tokens, MFU {result['mfu']:.1%} of {result['peak'] / 1e9:.1f} GFLOP/s",
        "",
        "| operator class | s per step | share of profiled self time | FLOP rate |",
        "|---|---:|---:|---:|",
    ]
    for label, entry in result["classes"].items():
        rate = f"{entry['flop_rate'] / 1e9:.1f} GFLOP/s" if entry["flop_rate"] else ""
        lines.append(f"| {label} | {entry['s_per_step']:.3f} | {entry['share']:.1%} | {rate} |")
    lines += ["", "| operator | input shapes | class | s per step |", "|---|---|---|---:|"]
    events = sorted(result["events"], key=lambda event: -event["self_s"])[:top]
    for event in events:
        seconds = event["self_s"] / result["steps"]
        lines.append(
            f"| `{event['name']}` | {event['shapes']} | {operator_class(event['name'])} | {seconds:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
