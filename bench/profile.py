"""Where a stage's training step goes (PPO: its training phase): torch.profiler, time by operator class.

    python -m bench profile [--stage sft|reward|dpo|ppo] [--config configs/pipelines/quickstart.yaml] [--wait 1]
        [--active 2] [--top 12] [--shapes] [--trace] [--out runs/bench/profile] [key=value ...]

The stage is built in this process by its own `build` (the same trainer `alignment stage` runs), with the
pipeline's section and the `key=value` overrides, W&B off. The first `--wait` steps run unprofiled (the allocator
and the data pipeline warm up there); the next `--active` ones are recorded with torch.profiler (CPU activity, plus
CUDA on a GPU; operator FLOPs counted by the profiler for matmuls). TRL-backed stages (sft, reward, dpo): a
callback profiles optimiser steps and then stops the training. Our PPO: the training phase of each iteration
(`PPOTrainer.update`, every PPO epoch over one rollout) is profiled; rollouts run unprofiled, and the run is
`--wait + --active` iterations long. The artifacts a stage starts from (`init_from`, a learned `reward_model`) are
taken from `--out`; each that is missing is made first by one step of its stage. For PPO the RM gate is off
(`ppo.min_rm_accuracy=0`) unless an override sets it.

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
import importlib
import json
import time
from pathlib import Path
from typing import Any

from bench.flops import trl_stage_flops
from bench.stages import measure_peaks, model_size, ppo_phases, stage_overrides

PROFILED_STAGES = ("sft", "reward", "dpo", "ppo")
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
`aten::_softmax_backward_data` sits under attention: eager attention's softmax is the only plain softmax with a
backward here (the LM head's log-probs backpropagate through `_log_softmax_backward_data`, or through TRL's chunked
kernel, which writes its own gradient)."""
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


class Recorder:
    """One torch.profiler session over several steps: started before the first, stopped after the last."""

    def __init__(self, trace: Path | None, shapes: bool) -> None:
        self.trace, self.shapes = trace, shapes
        self.profile: Any = None
        self.started = 0.0
        self.figures: dict[str, Any] = {}

    def start(self) -> None:
        import torch

        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profile = torch.profiler.profile(
            activities=activities, with_flops=True, record_shapes=self.shapes
        )
        self.profile.__enter__()
        self.started = time.perf_counter()

    def stop(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.figures["wall_s"] = time.perf_counter() - self.started
        self.profile.__exit__(None, None, None)
        self.figures["events"] = [
            {
                "name": event.key,
                "shapes": str(event.input_shapes) if self.shapes else "",
                "self_s": event.self_cpu_time_total / 1e6,
                "flops": float(event.flops or 0),
            }
            for event in self.profile.key_averages(group_by_input_shape=self.shapes)
        ]
        if self.trace is not None:
            self.profile.export_chrome_trace(str(self.trace))


def profiler_callback(trainer: Any, wait: int, active: int, recorder: Recorder) -> Any:
    """Profiles optimiser steps wait+1 .. wait+active of a TRL trainer, times their phases, then stops the
    training."""
    from transformers import TrainerCallback

    figures = recorder.figures
    figures.update(forward_backward_s=0.0, optimizer_s=0.0)

    class ProfileSteps(TrainerCallback):
        marks: dict[str, float] = {}

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == wait and recorder.profile is None:
                figures["tokens_before"] = trainer._total_train_tokens
                recorder.start()
            self.marks["step"] = time.perf_counter()

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if recorder.profile is not None:
                self.marks["pre_optimizer"] = time.perf_counter()
                figures["forward_backward_s"] += self.marks["pre_optimizer"] - self.marks["step"]

        def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if recorder.profile is not None:
                figures["optimizer_s"] += time.perf_counter() - self.marks["pre_optimizer"]

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if recorder.profile is None or state.global_step < wait + active:
                return
            recorder.stop()
            figures["tokens"] = trainer._total_train_tokens - figures.pop("tokens_before")
            control.should_training_stop = True

    return ProfileSteps()


def profile_ppo_updates(trainer: Any, wait: int, active: int, recorder: Recorder) -> None:
    """Our PPO: profiles the training phase (`PPOTrainer.update`, every PPO epoch over one rollout) of iterations
    wait+1 .. wait+active. Rollouts (generation, forward passes, scoring) run unprofiled; `bench stages` times them."""
    update = trainer.update
    figures = recorder.figures
    figures.update(tokens=0, response_tokens=0, calls=0)

    def profiled_update(rollout: Any, iteration: int) -> dict[str, float]:
        figures["calls"] += 1
        if not wait < figures["calls"] <= wait + active:
            return update(rollout, iteration)
        if figures["calls"] == wait + 1:
            recorder.start()
        figures["tokens"] += int(rollout.attention_mask.sum())
        figures["response_tokens"] += int(rollout.mask.sum())
        stats = update(rollout, iteration)
        if figures["calls"] == wait + active:
            recorder.stop()
        return stats

    trainer.update = profiled_update


def ensure_inputs(pipeline: Any, pipeline_path: str, stage: str, out: Path, extra: tuple[str, ...]) -> None:
    """The artifacts the stage starts from (`init_from`, a learned `reward_model`): one step of each stage that is
    missing from `out` is trained first."""
    from alignment import artifacts
    from alignment.config import STAGES, load_pipeline, stage_args
    from alignment.stages.common import device_defaults

    args = stage_args(pipeline, stage, output_dir=str(out / ".work" / stage), **device_defaults())
    needed = [getattr(args, key, None) for key in ("init_from", "reward_model")]
    for name in (name for name in STAGES if name in needed):
        prerequisite = load_pipeline(pipeline_path, stage_overrides(name, out, 1, extra))
        if artifacts.is_complete(prerequisite.stage_output_dir(name)):
            continue
        print(f"[profile] no {name} artifact in --out: training one {name} step first", flush=True)
        ensure_inputs(prerequisite, pipeline_path, name, out, extra)
        importlib.import_module(f"alignment.stages.{name}").train(prerequisite)


def profile_stage(cli: argparse.Namespace) -> dict[str, Any]:
    from alignment.config import load_pipeline
    from alignment.stages.common import StageRun

    out = Path(cli.out)
    extra = tuple(cli.overrides)
    if cli.stage == "ppo" and not any(item.startswith("ppo.min_rm_accuracy=") for item in extra):
        print(
            "[profile] ppo.min_rm_accuracy=0: a profile does not need an RM good enough to optimise",
            flush=True,
        )
        extra += ("ppo.min_rm_accuracy=0",)
    steps = cli.wait + cli.active
    pipeline = load_pipeline(cli.config, stage_overrides(cli.stage, out, steps, extra))
    ensure_inputs(pipeline, cli.config, cli.stage, out, extra)
    run = StageRun(pipeline, cli.stage, restart=True)
    trainer, _ = importlib.import_module(f"alignment.stages.{cli.stage}").build(pipeline, run)
    recorder = Recorder(out / "trace.json" if cli.trace else None, cli.shapes)
    if cli.stage == "ppo":
        profile_ppo_updates(trainer, cli.wait, cli.active, recorder)
    else:
        trainer.add_callback(profiler_callback(trainer, cli.wait, cli.active, recorder))
    trainer.train()
    figures = recorder.figures
    if "events" not in figures:
        raise SystemExit(
            f"[profile] training ended before step {steps} (--wait {cli.wait} + --active {cli.active}), "
            "so nothing was profiled; see the trainer's log above for why it stopped"
        )
    args = trainer.args
    model_cfg = args.model or pipeline.model
    method = model_cfg.tuning.method
    size = model_size(model_cfg.name_or_path)
    if cli.stage == "ppo":
        logged = {"num_tokens": figures["tokens"], "response_tokens": figures["response_tokens"]}
        flops = ppo_phases(size, method, logged, args)["training"]
    else:
        flops = trl_stage_flops(cli.stage, method, size, figures["tokens"])
    split = {
        f"{name}_s_per_step": figures[f"{name}_s"] / cli.active
        for name in ("forward_backward", "optimizer")
        if f"{name}_s" in figures
    }
    return {
        "stage": cli.stage,
        "method": method,
        "steps": cli.active,
        "wall_s_per_step": figures["wall_s"] / cli.active,
        **split,
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
    unit = "training phase" if result["stage"] == "ppo" else "step"
    split = (
        f" (forward+backward {result['forward_backward_s_per_step']:.2f}, optimizer {result['optimizer_s_per_step']:.2f})"
        if "optimizer_s_per_step" in result
        else ""
    )
    lines = [
        f"{result['stage']} ({result['method']}), {result['steps']} profiled {unit}s: {step:.2f} s per {unit}{split}, "
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
