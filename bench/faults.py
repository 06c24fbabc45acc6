"""Fault injection: each stage killed (SIGKILL) at random moments, then resumed; is every artifact complete and
equal to an uninterrupted run's?

    python -m bench faults [--stages sft,reward,dpo,ppo,grpo,rloo] [--kills 20] [--no-points] [--seed 0]
        [--out runs/bench/faults]

1. On the smoke pipeline (tiny random model, fp32, W&B offline; GRPO and RLOO for 4 steps, not 2, so that a
   checkpoint precedes the last step): an SFT run that the other stages start from, then one uninterrupted
   reference run of each stage, timed from launch to exit (imports, data preparation, training,
   checkpoints, publishing).
2. For each stage, `--kills` runs in fresh output folders, each killed with SIGKILL (its whole process group) at a
   moment drawn uniformly from launch to 95% of the reference's wall time (a run that ends before its moment, the
   machine being shared, is run again and killed at 0.8 times that moment). Where the kill landed is read from what
   it left: no data snapshot yet (`startup`: imports, model loading, data preparation), a checkpoint without its
   COMPLETE marker (`checkpointing`), a staging folder (`publishing`: final save, metrics, manifest), a complete
   artifact (`published`), else `training`. Kills that land in the short save windows are rare, so (unless
   `--no-points`) each stage is also killed once at each of the named points of `ALIGNMENT_FAULT_AT`
   (alignment.artifacts.FAULT_POINTS: after data preparation, mid checkpoint save, after a complete checkpoint,
   with the artifact staged, with its manifest written before the rename).
3. Right after each kill: an artifact that exists must be whole (`corrupt` otherwise). Then the same command again,
   to completion, and checks: exit 0; the artifact is whole (MANIFEST.json valid, every safetensors file loads
   with finite tensors, metrics and log history parse); nothing of the interrupted run is left (checkpoint without
   its marker, staging or retired folder); per-step training losses equal the reference's within 1e-5; the largest
   weight difference from the reference.
Results: `<out>/result.json` and a Markdown table on stdout. Exit 1 when any check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = ("sft", "reward", "dpo", "ppo", "grpo", "rloo")
LOSS_TOLERANCE = 1e-5


def stage_config(out: Path, sft_artifact: Path | None) -> Path:
    """The smoke pipeline with its output in `out` and every later stage starting from `sft_artifact`."""
    config = yaml.safe_load((REPO / "configs" / "pipelines" / "smoke.yaml").read_text())
    config["output_dir"] = str(out / "run")
    config["tracking"] = {"mode": "offline", "project": "alignment-bench-faults"}
    for stage in ("grpo", "rloo"):
        config[stage]["max_steps"] = 4
    if sft_artifact is not None:
        for stage in STAGES[1:]:
            config[stage]["init_from"] = str(sft_artifact)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start(stage: str, config: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`alignment stage <stage>` in its own process group (a kill takes its children too)."""
    handle = log.open("a")
    return subprocess.Popen(
        [sys.executable, "-m", "alignment.cli", "stage", stage, "--config", str(config)],
        cwd=REPO,
        stdout=handle,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )


def run_to_end(stage: str, config: Path, log: Path) -> tuple[int, float]:
    started = time.perf_counter()
    code = start(stage, config, log).wait()
    return code, time.perf_counter() - started


def kill_at(process: subprocess.Popen, seconds: float) -> bool:
    """SIGKILL the process group after `seconds`; False when the process had already exited."""
    try:
        process.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return True


def landed_in(run_dir: Path, stage: str) -> str:
    """Which phase a kill interrupted, from what it left on disk."""
    from alignment import artifacts

    work = run_dir / ".work" / stage
    if artifacts.is_complete(run_dir / stage):
        return "published"
    if any(run_dir.glob(f".{stage}.staging*")) or any(run_dir.glob(f".{stage}.retired-*")):
        return "publishing"
    if any(
        not (checkpoint / artifacts.CHECKPOINT_MARKER).exists() for checkpoint in work.glob("checkpoint-*")
    ):
        return "checkpointing"
    if not (work / "data" / "train.jsonl").is_file():
        return "startup"
    return "training"


def whole(artifact: Path) -> str | None:
    """None when `artifact` is a whole artifact, else what is wrong with it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from alignment import artifacts

    if not artifacts.is_complete(artifact):
        return "no valid MANIFEST.json"
    try:
        for name in ("metrics.json", "log_history.json"):
            json.loads((artifact / name).read_text())
        weights = sorted(artifact.glob("*.safetensors"))
        if not weights:
            return "no safetensors weights"
        for path in weights:
            for key, tensor in load_file(path).items():
                if tensor.is_floating_point() and not tensor.isfinite().all():
                    return f"{path.name}: {key} is not finite"
    except (OSError, ValueError, SafetensorError) as error:  # ValueError: JSONDecodeError
        return f"{type(error).__name__}: {error}"
    return None


def leftovers(run_dir: Path, stage: str) -> list[str]:
    from alignment import artifacts

    found = [
        str(path)
        for path in (run_dir / ".work" / stage).glob("checkpoint-*")
        if not (path / artifacts.CHECKPOINT_MARKER).exists()
    ]
    found += [str(path) for path in run_dir.glob(f".{stage}.staging*")]
    found += [str(path) for path in run_dir.glob(f".{stage}.retired-*")]
    return found


def losses(artifact: Path) -> list[float]:
    history = json.loads((artifact / "log_history.json").read_text())
    return [entry["loss"] for entry in history if "loss" in entry]


def weight_difference(artifact: Path, reference: Path) -> float:
    from safetensors.torch import load_file

    ours, theirs = load_file(artifact / "model.safetensors"), load_file(reference / "model.safetensors")
    if ours.keys() != theirs.keys():
        return float("inf")
    return max((ours[k].double() - theirs[k].double()).abs().max().item() for k in theirs)


def named_points(stage: str, config: Path) -> list[str]:
    """Every fault point once, the checkpoint points at the stage's last checkpoint before its final step."""
    section = yaml.safe_load(config.read_text())[stage]
    save, steps = int(section["save_steps"]), int(section["max_steps"])
    last = max(step for step in range(save, steps, save)) if save < steps else save
    return ["data", f"checkpoint-written:{last}", f"checkpoint:{last}", "staged", "publishing"]


def trial(
    stage: str,
    folder: Path,
    sft_artifact: Path | None,
    reference: Path,
    moment: float | None = None,
    point: str | None = None,
) -> dict[str, Any]:
    """One kill (at `moment` seconds, or at the named `point`) and one resume; the checks of the docstring."""
    shutil.rmtree(folder, ignore_errors=True)
    config = stage_config(folder, sft_artifact)
    run_dir = folder / "run"
    log = folder / "stage.log"
    row: dict[str, Any] = {"stage": stage, "moment_s": moment, "point": point}
    if point is not None:
        code = start(stage, config, log, env={"ALIGNMENT_FAULT_AT": point}).wait()
        row["killed"] = code == -signal.SIGKILL
    else:
        row["killed"] = kill_at(start(stage, config, log), moment or 0.0)
        while not row["killed"] and (moment or 0.0) > 1.0:
            # the run beat the reference's time (the machine is shared): an earlier moment, in a fresh folder
            moment = 0.8 * (moment or 0.0)
            shutil.rmtree(run_dir, ignore_errors=True)
            row["moment_s"] = moment
            row["killed"] = kill_at(start(stage, config, log), moment)
    row["landed_in"] = landed_in(run_dir, stage) if row["killed"] else "after exit"
    problems = []
    if (run_dir / stage).exists() and (wrong := whole(run_dir / stage)) is not None:
        problems.append(f"after the kill: {wrong}")
        row["corrupt"] = True
    code, _ = run_to_end(stage, config, log)
    if code != 0:
        problems.append(f"resume exited {code} (log: {log})")
    elif (wrong := whole(run_dir / stage)) is not None:
        problems.append(f"after the resume: {wrong}")
        row["corrupt"] = True
    else:
        left = leftovers(run_dir, stage)
        if left:
            problems.append(f"left behind: {left}")
        ours, theirs = losses(run_dir / stage), losses(reference)
        if len(ours) != len(theirs):
            problems.append(f"{len(ours)} logged losses, the reference {len(theirs)}")
        else:
            row["max_loss_difference"] = max(abs(a - b) for a, b in zip(ours, theirs, strict=True))
            if row["max_loss_difference"] > LOSS_TOLERANCE:
                problems.append(f"losses differ by {row['max_loss_difference']:.3g}")
        row["max_weight_difference"] = weight_difference(run_dir / stage, reference)
    row["corrupt"] = row.get("corrupt", False)
    row["problems"] = problems
    if not problems:
        shutil.rmtree(folder, ignore_errors=True)  # keep the folders of failed trials only
    return row


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    phases: dict[str, int] = {}
    for row in rows:
        phases[row["landed_in"]] = phases.get(row["landed_in"], 0) + 1
    differences = [row["max_loss_difference"] for row in rows if "max_loss_difference" in row]
    weights = [row["max_weight_difference"] for row in rows if "max_weight_difference" in row]
    return {
        "trials": len(rows),
        "phases": phases,
        "resumed_whole": sum(1 for row in rows if not row["problems"]),
        "corrupt": sum(1 for row in rows if row["corrupt"]),
        "max_loss_difference": max(differences) if differences else None,
        "max_weight_difference": max(weights) if weights else None,
        "failed": [row for row in rows if row["problems"]],
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        "| stage | kind | trials | landed in | resumed whole | corrupt | max abs loss diff | max abs weight diff |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for stage, kinds in result["stages"].items():
        for kind, figures in kinds.items():
            phases = ", ".join(f"{name} {count}" for name, count in sorted(figures["phases"].items()))
            loss = figures["max_loss_difference"]
            weight = figures["max_weight_difference"]
            lines.append(
                f"| {stage} | {kind} | {figures['trials']} | {phases} | {figures['resumed_whole']} | "
                f"{figures['corrupt']} | {'-' if loss is None else f'{loss:.1e}'} | "
                f"{'-' if weight is None else f'{weight:.1e}'} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench faults", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)}")
    parser.add_argument("--kills", type=int, default=20, help="random kill moments per stage")
    parser.add_argument("--no-points", action="store_true", help="skip the kills at the named fault points")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    parser.add_argument("--out", default="runs/bench/faults")
    cli = parser.parse_args(argv)
    stages = [s for s in cli.stages.split(",") if s]
    if unknown := [s for s in stages if s not in STAGES]:
        parser.error(f"unknown stage {unknown}; of {list(STAGES)}")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from alignment.precision import cpu_flags
    from bench.engines import cpu_model

    out = Path(cli.out).resolve()
    rng = random.Random(cli.seed)
    flags = sorted(cpu_flags() & {"amx_bf16", "avx512_bf16"})
    result: dict[str, Any] = {
        "command": "python -m bench faults " + " ".join(argv if argv is not None else sys.argv[2:]),
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_model(),
        "cpu_bf16_flags": flags,
        "stages": {},
        "reference_wall_s": {},
    }
    print(f"cpu: {result['cpu']} (bf16 flags: {flags or 'none'})", flush=True)
    started = time.perf_counter()
    base = stage_config(out / "base", None)
    code, wall = run_to_end("sft", base, out / "base" / "stage.log")
    if code:
        raise SystemExit(
            f"the SFT run the stages start from failed ({code}); log: {out / 'base' / 'stage.log'}"
        )
    sft_artifact = out / "base" / "run" / "sft"
    failed = False
    for stage in stages:
        upstream = None if stage == "sft" else sft_artifact
        folder = out / stage / "reference"
        shutil.rmtree(folder, ignore_errors=True)
        code, wall = run_to_end(stage, stage_config(folder, upstream), folder / "stage.log")
        if code:
            raise SystemExit(f"the uninterrupted {stage} run failed ({code}); log: {folder / 'stage.log'}")
        reference = folder / "run" / stage
        result["reference_wall_s"][stage] = round(wall, 1)
        print(f"[{stage}] uninterrupted run: {wall:.1f} s", flush=True)
        kinds: dict[str, list[dict[str, Any]]] = {"random moment": [], "named point": []}
        for index in range(cli.kills):
            moment = rng.uniform(0.0, 0.95 * wall)
            row = trial(stage, out / stage / f"kill-{index}", upstream, reference, moment=moment)
            kinds["random moment"].append(row)
            print(
                f"[{stage}] kill at {moment:.1f} s: {row['landed_in']}, {row['problems'] or 'ok'}", flush=True
            )
        if not cli.no_points:
            for point in named_points(stage, stage_config(folder, upstream)):
                row = trial(
                    stage, out / stage / f"point-{point.replace(':', '-')}", upstream, reference, point=point
                )
                kinds["named point"].append(row)
                print(f"[{stage}] kill at {point}: {row['landed_in']}, {row['problems'] or 'ok'}", flush=True)
        result["stages"][stage] = {kind: summary(rows) for kind, rows in kinds.items() if rows}
        failed |= any(figures["failed"] for figures in result["stages"][stage].values())
    result["wall_s"] = round(time.perf_counter() - started, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"result: {out / 'result.json'} ({result['wall_s'] / 60:.1f} min)")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
