"""`alignment run`: the stages of one pipeline config in order, each its own `accelerate launch` process.

Artifacts are the only thing passed between stages (paths, via the resolved config). A re-run skips a stage whose
artifact is complete with the same config hash and the same inputs (the manifest hashes of its upstream
artifacts); a stage that was interrupted resumes from its latest complete checkpoint. `--from STAGE` re-runs that
stage and everything after it. A failed stage stops the pipeline with its error, its log path and the command to
re-run it alone. `OUTPUT/run.json` records stages, artifacts, config hashes, the W&B group and timings.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignment import artifacts
from alignment.config import ConfigError, PipelineConfig, config_hash, load_pipeline, save_resolved
from alignment.tracking import pipeline_run_id

UPSTREAM = {"reward": ("sft",), "dpo": ("sft",), "ppo": ("sft", "reward"), "grpo": ("sft",), "rloo": ("sft",)}


@dataclass
class StagePlan:
    stage: str
    command: list[str]
    config_hash: str
    action: str  # "run", "skip", "resume"
    reason: str
    log_path: Path
    seconds: float = 0.0
    status: str = "pending"
    metrics: dict[str, Any] = field(default_factory=dict)


def _accelerate_command(pipeline: PipelineConfig, stage: str, resolved: Path, force: bool) -> list[str]:
    accelerate_config = Path(pipeline.accelerate_config)
    if not accelerate_config.is_file():
        raise ConfigError(
            f"{pipeline.source_path}: accelerate_config {accelerate_config} does not exist (in a config file a "
            "relative path is relative to the file's folder; or name a shipped one: `alignment configs`)"
        )
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(accelerate_config),
        "-m",
        f"alignment.stages.{stage}",
        "--config",
        str(resolved),
    ]
    return command + (["--force"] if force else [])


def _inputs_changed(pipeline: PipelineConfig, stage: str) -> str | None:
    """Why a complete artifact is stale because an upstream artifact changed since, or None."""
    manifest = artifacts.read_manifest(pipeline.stage_output_dir(stage))
    for name, record in manifest.get("inputs", {}).items():
        upstream = Path(record["path"])
        if not artifacts.is_complete(upstream):
            return f"input {name} ({upstream}) is gone or incomplete"
        if artifacts.manifest_hash(upstream) != record["manifest_hash"]:
            return f"input {name} changed since this artifact was built"
    return None


def plan(pipeline: PipelineConfig, resolved: Path, from_stage: str | None = None) -> list[StagePlan]:
    if from_stage is not None and from_stage not in pipeline.stages:
        raise ConfigError(f"--from {from_stage}: not among this pipeline's stages {pipeline.stages}")
    plans: list[StagePlan] = []
    forced = False
    rerun_upstream: set[str] = set()
    for stage in pipeline.stages:
        if stage not in pipeline.stage_sections and stage != "sft":
            raise ConfigError(
                f"{pipeline.source_path}: stages lists {stage!r} but the config has no `{stage}:` section"
            )
        forced = forced or stage == from_stage
        digest = config_hash(pipeline, stage)
        out = pipeline.stage_output_dir(stage)
        log_path = Path(pipeline.output_dir) / "logs" / f"{stage}.log"
        depends_on_rerun = any(up in rerun_upstream for up in UPSTREAM.get(stage, ()))
        has_checkpoint = (
            artifacts.latest_complete_checkpoint(Path(pipeline.output_dir) / ".work" / stage) is not None
        )
        if forced:
            action, reason = "run", f"--from {from_stage}"
        elif not artifacts.is_complete(out):
            if has_checkpoint:
                action, reason = "resume", "interrupted: resumes from its latest complete checkpoint"
            else:
                action, reason = "run", "no artifact yet"
        elif depends_on_rerun:
            action, reason = "run", "an upstream stage runs again"
        else:
            manifest = artifacts.read_manifest(out)
            stale = _inputs_changed(pipeline, stage)
            if manifest.get("config_hash") != digest:
                action, reason = "run", f"config changed (hash {manifest.get('config_hash')} -> {digest})"
            elif stale:
                action, reason = "run", stale
            else:
                action, reason = "skip", "complete with the same config and inputs"
        if action != "skip":
            rerun_upstream.add(stage)
        force = action == "run" and artifacts.is_complete(out)
        plans.append(
            StagePlan(
                stage, _accelerate_command(pipeline, stage, resolved, force), digest, action, reason, log_path
            )
        )
    return plans


def stage_error_lines(tail: list[str], limit: int = 15) -> list[str]:
    """The last lines of a failed stage's log, without the launcher's own traceback.

    `accelerate launch` answers a failed child with a traceback of its own that ends in
    `subprocess.CalledProcessError`; it says nothing the user needs and would push the stage's error out of view.
    """
    lines = list(tail)
    if lines and "CalledProcessError" in lines[-1]:
        starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
        if starts:
            lines = lines[: starts[-1]]
            while lines and (not lines[-1].strip() or lines[-1].startswith("The above exception")):
                lines.pop()
    return lines[-limit:]


def stage_exception(lines: list[str]) -> str | None:
    """The exception line (`Type: message`) that ended a failed stage's log, the launcher's own traceback
    left out; None when the log has no Python traceback."""
    lines = stage_error_lines(lines, limit=len(lines))
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if not starts:
        return None
    for line in lines[starts[-1] + 1 :]:  # frames are indented; the exception line is not
        if line.strip() and not line.startswith((" ", "\t")):
            return line.strip()
    return None


def log_lines(path: Path) -> list[str]:
    """A stage log's non-empty lines, progress-bar redraws (carriage returns) split apart."""
    text = path.read_text(errors="replace") if path.is_file() else ""
    return [line for line in text.replace("\r", "\n").split("\n") if line.strip()]


def _run_stage(step: StagePlan, env: dict[str, str], console: Any, prefix: str = "") -> int:
    """Run one stage, its output to its log file, its progress on the console.

    The stage appends progress events to OUTPUT/logs/<stage>.progress.jsonl (alignment.progress); an interactive
    console shows the latest as one live line, any other console (CI, a log file) prints one plain line at most
    every ALIGNMENT_PROGRESS_INTERVAL seconds (default 10) and the last one when the stage ends."""
    import select

    from alignment.progress import ENV, PlainThrottle, ProgressReader, render_line

    prefix = prefix or step.stage
    step.log_path.parent.mkdir(parents=True, exist_ok=True)
    progress_path = step.log_path.with_suffix(".progress.jsonl")
    progress_path.unlink(missing_ok=True)
    reader = ProgressReader(progress_path)
    throttle = PlainThrottle(float(os.environ.get("ALIGNMENT_PROGRESS_INTERVAL", "10")))
    interactive = console.is_terminal
    tail: deque[str] = deque(maxlen=400)  # the launcher's own traceback alone can be 40 lines
    seen_event = False

    def show_events(status: Any) -> None:
        nonlocal seen_event
        for event in reader.poll():
            seen_event = True
            if interactive:
                status.update(f"[bold]{prefix}[/bold]  " + render_line("", event).strip())
            elif (shown := throttle.offer(event)) is not None:
                console.print(render_line(prefix, shown), markup=False, highlight=False)

    with open(step.log_path, "w") as log, console.status(f"[bold]{prefix}[/bold] starting") as status:
        log.write("$ " + shlex.join(step.command) + "\n")
        log.flush()
        process = subprocess.Popen(
            step.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**env, ENV: str(progress_path)},
        )
        assert process.stdout is not None
        buffer = ""
        while True:
            ready, _, _ = select.select([process.stdout], [], [], 0.5)
            if ready:
                data = os.read(
                    process.stdout.fileno(), 65536
                )  # whatever has arrived; progress bars end in \r
                if not data:
                    break
                chunk = data.decode("utf-8", errors="replace")
                log.write(chunk)
                log.flush()
                buffer += chunk
                *lines, buffer = buffer.replace("\r", "\n").split("\n")
                for line in lines:
                    if line.strip():
                        tail.append(line)
                        if (
                            not seen_event
                            and interactive
                            and ("%|" in line or line.startswith(f"[{step.stage}]"))
                        ):
                            status.update(f"[bold]{prefix}[/bold] {line.strip()[:120]}")
            show_events(status)
        code = process.wait()
        show_events(status)
        if not interactive and (last := throttle.flush()) is not None:
            console.print(render_line(prefix, last), markup=False, highlight=False)
    step.tail = list(tail)  # type: ignore[attr-defined]
    return code


def run(
    config_path: str | Path,
    overrides: list[str] | None = None,
    from_stage: str | None = None,
    dry_run: bool = False,
    label: str = "",
) -> int:
    """`label` goes before each stage's `[i/n] stage` on the console (compare: `arm 2/6 dpo-beta-0.1 seed 1`)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=True)  # long paths and commands stay copy-pasteable
    pipeline = load_pipeline(config_path, overrides)
    output = Path(pipeline.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    resolved = save_resolved(pipeline, output)
    group = pipeline_run_id(pipeline)
    plans = plan(pipeline, resolved, from_stage)

    if dry_run:
        for step in plans:
            print(f"# {step.stage}: {step.action} ({step.reason})")
            if step.action != "skip":
                print(shlex.join(step.command))
        return 0

    env = {**os.environ, "ALIGNMENT_RUN_ID": group, "PYTHONUNBUFFERED": "1"}  # live stage logs
    started = time.time()
    record: dict[str, Any] = {
        "name": pipeline.name,
        "config": str(resolved),
        "wandb_group": group,
        "stages": [],
    }
    console.print(
        f"[bold]pipeline {pipeline.name}[/bold]: {' -> '.join(pipeline.stages)}  (W&B group {group})"
    )
    exit_code = 0
    for index, step in enumerate(plans, 1):
        prefix = (f"{label} " if label else "") + f"[{index}/{len(plans)}] {step.stage}"
        if step.action == "skip":
            step.status = "skipped"
            console.print(f"{prefix}: skipped ({step.reason})")
        else:
            console.print(f"{prefix}: {step.action} ({step.reason}); log: {step.log_path}")
            t0 = time.time()
            code = _run_stage(step, env, console, prefix)
            step.seconds = time.time() - t0
            if code != 0:
                step.status = "failed"
                console.print(
                    f"[red]{prefix} failed[/red] (exit {code}) after {step.seconds:.0f} s. Last lines:"
                )
                for line in stage_error_lines(getattr(step, "tail", [])):
                    console.print("    " + line, markup=False, highlight=False)
                console.print(f"log: {step.log_path}")
                console.print("re-run this stage alone:\n    " + shlex.join(step.command), markup=False)
                exit_code = code
            else:
                step.status = "done"
                console.print(f"{prefix}: done in {step.seconds:.0f} s")
        out = pipeline.stage_output_dir(step.stage)
        if artifacts.is_complete(out):
            step.metrics = artifacts.read_manifest(out).get("metrics", {})
        record["stages"].append(
            {
                "stage": step.stage,
                "status": step.status,
                "action": step.action,
                "reason": step.reason,
                "artifact": str(out) if artifacts.is_complete(out) else None,
                "config_hash": step.config_hash,
                "seconds": round(step.seconds, 2),
                "log": str(step.log_path),
                "command": shlex.join(step.command),
            }
        )
        if exit_code:
            break
    record["wall_time_s"] = round(time.time() - started, 2)
    record["status"] = "failed" if exit_code else "complete"
    artifacts.write_json_atomic(output / "run.json", record)

    table = Table(title=f"{pipeline.name}: {record['status']} in {record['wall_time_s']:.0f} s")
    for column in ("stage", "status", "seconds", "artifact"):
        table.add_column(column)
    for item in record["stages"]:
        table.add_row(item["stage"], item["status"], f"{item['seconds']:.0f}", item["artifact"] or "-")
    console.print(table)
    if not exit_code and pipeline.evaluation is not None:
        _gold_eval(pipeline, console)
    if not exit_code:
        summary = summarise(pipeline, plans)
        if summary:
            console.print(summary)
            (output / "summary.json").write_text(json.dumps(summary_rows(pipeline, plans), indent=2) + "\n")
    return exit_code


def _gold_eval(pipeline: PipelineConfig, console: Any) -> None:
    """Gold score of each policy artifact on the same held-out prompts (alignment.evaluate), cached by content."""
    import hashlib

    from alignment.data import load_checked
    from alignment.evaluate import PolicySampler, gold_score_policy
    from alignment.progress import quiet_library_noise

    quiet_library_noise(loading_bars=True)  # no "Loading weights" bars under the result table

    evaluation = pipeline.evaluation
    assert evaluation is not None
    rows = load_checked(evaluation.data, "prompt").rows
    rows = [row for row in rows if row.get("gold")]
    if not rows:
        console.print(f"evaluation: no prompts with a gold checker in {evaluation.data.source}; skipped")
        return
    path = Path(pipeline.output_dir) / "gold_eval.json"
    cached = json.loads(path.read_text()) if path.is_file() else {}
    results: dict[str, Any] = {}
    details: dict[str, Any] = cached.get("details", {})
    sampler: PolicySampler | None = None
    for stage in evaluation.policies:
        artifact = pipeline.stage_output_dir(stage)
        if stage not in pipeline.stages or not artifacts.is_complete(artifact):
            continue
        key = hashlib.sha256(
            json.dumps(
                [artifacts.manifest_hash(artifact), dataclasses.asdict(evaluation), pipeline.model.dtype],
                default=str,
            ).encode()
        ).hexdigest()[:16]
        if details.get(stage, {}).get("key") == key:
            results[stage] = details[stage]["mean"]
            continue
        with console.status(f"evaluation: generating with {stage} on {len(rows)} held-out prompts"):
            sampler = sampler or PolicySampler(evaluation.generation, pipeline.model.dtype)
            scored = gold_score_policy(
                artifact, rows, evaluation.max_new_tokens, evaluation.batch_size, sampler=sampler
            )
        results[stage] = scored["mean"]
        details[stage] = {
            "key": key,
            **sampler.record,
            "mean": scored["mean"],
            "n": scored["n"],
            "ci95_half_width": _half_width(scored["scores"]),
            "scores": scored["scores"],
            "samples": [
                {"prompt": row["prompt"][-1]["content"], "completion": text, "score": score}
                for row, text, score in list(zip(rows, scored["completions"], scored["scores"], strict=True))[
                    :8
                ]
            ],
        }
    artifacts.write_json_atomic(path, {**results, "details": details})


def _half_width(scores: list[float]) -> float:
    """95% half-width of a mean (normal approximation; gold scores are bounded in [0, 1])."""
    from alignment.evaluate import mean_and_half_width

    return mean_and_half_width(scores)[1]


def summary_rows(pipeline: PipelineConfig, plans: list[StagePlan]) -> dict[str, Any]:
    """The figures a user looks at first, from the stage manifests."""
    rows: dict[str, Any] = {}
    metrics = {step.stage: step.metrics for step in plans}
    if "reward" in metrics and metrics["reward"]:
        m = metrics["reward"]
        rows["rm_heldout_accuracy"] = m.get("heldout_accuracy")
        rows["rm_heldout_accuracy_ci95"] = [
            m.get("heldout_accuracy_ci95_low"),
            m.get("heldout_accuracy_ci95_high"),
        ]
    if "dpo" in metrics and metrics["dpo"]:
        m = metrics["dpo"]
        rows["dpo_eval_reward_accuracy"] = m.get("eval_rewards/accuracies")
        rows["dpo_eval_reward_margin"] = m.get("eval_rewards/margins")
    if "ppo" in metrics and metrics["ppo"]:
        m = metrics["ppo"]
        rows["ppo_reward"] = m.get("reward/score")
        rows["ppo_kl"] = m.get("objective/kl")
    gold_path = Path(pipeline.output_dir) / "gold_eval.json"
    if gold_path.is_file():
        gold = json.loads(gold_path.read_text())
        rows["gold"] = {k: v for k, v in gold.items() if k != "details"}
        rows["gold_details"] = {
            k: {"n": v["n"], "ci95_half_width": v.get("ci95_half_width")}
            for k, v in gold.get("details", {}).items()
        }
    return rows


def summarise(pipeline: PipelineConfig, plans: list[StagePlan]) -> Any:
    from rich.table import Table

    rows = summary_rows(pipeline, plans)
    if not rows:
        return None
    table = Table(title="results")
    table.add_column("figure")
    table.add_column("value")
    fmt = lambda v: "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    if "rm_heldout_accuracy" in rows:
        lo, hi = rows["rm_heldout_accuracy_ci95"]
        table.add_row(
            "RM held-out accuracy (95% CI)", f"{fmt(rows['rm_heldout_accuracy'])} ({fmt(lo)}-{fmt(hi)})"
        )
    if "dpo_eval_reward_accuracy" in rows:
        table.add_row("DPO held-out reward accuracy", fmt(rows["dpo_eval_reward_accuracy"]))
        table.add_row("DPO held-out reward margin", fmt(rows["dpo_eval_reward_margin"]))
    if "ppo_reward" in rows:
        table.add_row("PPO reward, last iteration", fmt(rows["ppo_reward"]))
        table.add_row("PPO KL to reference per sequence, last iteration", fmt(rows["ppo_kl"]))
    gold = rows.get("gold", {})
    order = pipeline.evaluation.policies if pipeline.evaluation is not None else sorted(gold)
    details = rows.get("gold_details", {})
    for name in (n for n in order if n in gold):
        half = details.get(name, {}).get("ci95_half_width")
        shown = fmt(gold[name]) + (f" ± {half:.3f} (n={details[name]['n']})" if half is not None else "")
        table.add_row(f"gold task score: {name} (held-out tasks)", shown)
    return table
