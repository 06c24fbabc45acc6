"""How a stage's time scales: with the number of samples, with the sequence length, and from 1 to 2 processes.

    python -m bench scaling [--model smollm2] [--stage sft] [--steps 4,8,16] [--lengths 256,512]
        [--length-steps 4] [--processes 1,2] [--ddp-config configs/accelerate/cpu_ddp.yaml]
        [--out runs/bench/scaling] [key=value ...]

Each point is one run of our stage (bench.stages.measure_stage: the pipeline's own section, W&B off, no
checkpoints, figures from the stage's log over its training loop), all in one process run so ratios are fair:
- *samples*: the stage for each of `--steps` optimizer steps (samples = steps x batch). Expect linear: the table
  gives the least-squares line time = fixed + per_step x steps, its R^2, and each run's seconds per sample.
- *sequence length*: SFT only, rows packed into dense blocks of each of `--lengths` tokens (TRL's `wrapped`
  packing, so every row is exactly that long) for `--length-steps` steps: tokens/s and MFU by length.
- *processes*: the stage on 1 process (this python, torch's threads) and on 2 (`--ddp-config`, DDP; on a CPU
  each process gets its share of the cores). Same per-process batch, so 2 processes do twice the samples per
  step: the table compares tokens/s and samples/s.
Results: `<out>/result.json` and Markdown tables on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.stages import MODELS, STAGES, _number, measure_peaks, measure_stage, model_size


def linear_fit(xs: list[float], ys: list[float]) -> dict[str, float]:
    """Least-squares y = intercept + slope x, and R^2 (1.0 when the points lie on the line)."""
    if len(xs) < 2 or len(set(xs)) < 2:
        raise ValueError("a line needs at least two distinct x values")
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = mean_y - slope * mean_x
    total = sum((y - mean_y) ** 2 for y in ys)
    residual = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    return {"intercept": intercept, "slope": slope, "r2": 1.0 - residual / total if total else 1.0}


def points(cli: argparse.Namespace) -> list[dict[str, Any]]:
    """Every run of the sweep: its dimension, value, and how it is launched."""
    runs = [{"dimension": "samples", "value": steps, "steps": steps, "overrides": []} for steps in cli.steps]
    if cli.stage == "sft":
        runs += [
            {
                "dimension": "length",
                "value": length,
                "steps": cli.length_steps,
                "overrides": ["sft.packing=true", "sft.packing_strategy=wrapped", f"sft.max_length={length}"],
            }
            for length in cli.lengths
        ]
    runs += [
        {
            "dimension": "processes",
            "value": processes,
            "steps": cli.steps[len(cli.steps) // 2],
            "overrides": [],
            "accelerate_config": cli.ddp_config if processes > 1 else None,
            "num_processes": processes,
        }
        for processes in cli.processes
    ]
    return runs


def run_point(point: dict[str, Any], cli: argparse.Namespace, size: Any, peak: float) -> dict[str, Any]:
    label = f"{point['dimension']}-{point['value']}"
    options = argparse.Namespace(
        out=str(Path(cli.out) / label),
        steps=point["steps"],
        overrides=[*cli.overrides, *point["overrides"]],
        accelerate_config=point.get("accelerate_config"),
        num_processes=point.get("num_processes", 1),
        plain_trl=False,
    )
    row = measure_stage(cli.model, cli.stage, options, size, peak)
    return {**{k: point[k] for k in ("dimension", "value", "steps")}, **row}


def tables(result: dict[str, Any]) -> str:
    runs = result["runs"]
    lines: list[str] = []
    by = {d: [r for r in runs if r["dimension"] == d] for d in ("samples", "length", "processes")}
    if by["samples"]:
        fit = result["samples_fit"]
        lines += [
            f"Samples ({result['stage']}): train loop s = {fit['intercept']:.1f} + {fit['slope']:.2f} x steps "
            f"(R^2 {fit['r2']:.4f})",
            "",
            "| steps | samples | train loop s | s per sample | tokens/s |",
            "|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['steps']} | {r['samples']} | {r['train_runtime_s']:.1f} | "
            f"{r['train_runtime_s'] / r['samples']:.3f} | {_number(r['tokens_per_s'], ',.0f')} |"
            for r in by["samples"]
        ]
    if by["length"]:
        lines += [
            "",
            "| sequence length | tokens | train loop s | tokens/s | MFU |",
            "|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['value']} | {_number(r['num_tokens'], ',.0f')} | {r['train_runtime_s']:.1f} | {_number(r['tokens_per_s'], ',.0f')} "
            f"| {_number(r['mfu'], '.1%')} |"
            for r in by["length"]
        ]
    if by["processes"]:
        base = by["processes"][0]
        lines += [
            "",
            "| processes | samples | train loop s | samples/s | tokens/s | tokens/s vs 1 process |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['value']} | {r['samples']} | {r['train_runtime_s']:.1f} | {r['samples_per_s']:.2f} | "
            f"{_number(r['tokens_per_s'], ',.0f')} | {_ratio(r['tokens_per_s'], base['tokens_per_s'])} |"
            for r in by["processes"]
        ]
    return "\n".join(lines)


def _ratio(value: float | None, base: float | None) -> str:
    return "-" if not value or not base else f"{value / base:.2f}"


def _ints(text: str) -> list[int]:
    """Comma-separated positive integers; an empty string is an empty list (that sweep is skipped)."""
    values = [int(part) for part in text.split(",") if part.strip()]
    if values and min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench scaling", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2", choices=list(MODELS))
    parser.add_argument("--stage", default="sft", choices=list(STAGES))
    parser.add_argument(
        "--steps", type=_ints, default=[4, 8, 16], help="optimizer steps of the samples sweep"
    )
    parser.add_argument(
        "--lengths",
        type=_ints,
        default=[256, 512],  # the quickstart SFT at 1,024 passed 16 GB resident on a 24-GB machine
        help="packed lengths (sft only; every row must fit, as the data layer rejects longer rows; '' skips)",
    )
    parser.add_argument("--length-steps", type=int, default=4, help="optimizer steps per length")
    parser.add_argument(
        "--processes", type=_ints, default=[1, 2], help="process counts ('' skips this sweep)"
    )
    parser.add_argument("--ddp-config", default="configs/accelerate/cpu_ddp.yaml")
    parser.add_argument("--out", default="runs/bench/scaling")
    parser.add_argument("overrides", nargs="*", help="key=value pipeline overrides for every run")
    cli = parser.parse_args(argv)
    if len(set(cli.steps)) < 2:
        parser.error("--steps needs at least two distinct values to fit a line")

    from alignment.config import load_pipeline

    peaks = measure_peaks()
    peak = peaks[f"peak_{peaks['mfu_against']}_flops"]
    size = model_size(load_pipeline(MODELS[cli.model], cli.overrides).model.name_or_path)
    result: dict[str, Any] = {
        "command": "python -m bench scaling " + " ".join(argv if argv is not None else sys.argv[2:]),
        "date": time.strftime("%Y-%m-%d"),
        "model": cli.model,
        "stage": cli.stage,
        "matmul_parameters": dataclasses.asdict(size),
        **peaks,
        "runs": [],
    }
    for point in points(cli):
        row = run_point(point, cli, size, peak)
        result["runs"].append(row)
        print(json.dumps(row), flush=True)
    samples = [r for r in result["runs"] if r["dimension"] == "samples"]
    result["samples_fit"] = linear_fit([r["steps"] for r in samples], [r["train_runtime_s"] for r in samples])
    out = Path(cli.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(tables(result))


if __name__ == "__main__":
    main()
