"""`alignment run PIPELINE --slurm`: every stage of a pipeline as one Slurm job, each chained to the one before.

    alignment run quickstart --slurm --nodes 2 --gpus-per-node 8 --partition gpu --time 04:00:00 dpo.beta=0.2
    alignment status runs/quickstart          (or the pipeline config): each stage's job, its state, its artifact

The stages to run are planned as `alignment run` plans them locally (alignment.pipeline.plan): a stage whose
artifact is complete with the same config and inputs is skipped, not submitted. Each stage to run gets a script,
`OUTPUT/slurm/<stage>.sbatch` (mode 0600), submitted with `sbatch --parsable --export=ALL
--dependency=afterok:<the job before>`; the chain is recorded in `OUTPUT/slurm/jobs.json`.

- Overrides never pass through a shell: they are resolved at submission into `OUTPUT/slurm/resolved_config.yaml`,
  the one file every job reads (`--config`); the scripts hold only shell-quoted paths.
- No secret is written: a script exports only the non-secret variables of the service's allow-list
  (alignment.service.executors.SBATCH_EXPORTS) and the run id; the rest (WANDB_API_KEY, HF_TOKEN) reaches the
  job from this environment through sbatch's `--export=ALL`.
- Requeue-safe: `#SBATCH --requeue` and `--open-mode=append`; a requeued job runs the same stage command, which
  resumes from its latest complete checkpoint. A stage submitted with `--force` (re-run of a complete artifact)
  drops it when requeued where that lets it resume (`_force_lines`).
- A failed stage cancels the jobs after it (`--kill-on-invalid-dep=yes`) instead of leaving them pending forever.
- One node: the stage's local command (accelerate launch with the pipeline's accelerate_config; `--num_processes G`
  with G GPUs). Several nodes: `srun` starts one `accelerate launch` per node, its machine rank from
  SLURM_NODEID, the first node of the allocation as the main process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignment import artifacts
from alignment.config import (
    ConfigError,
    PipelineConfig,
    config_hash,
    find_config,
    load_pipeline,
    save_resolved,
)
from alignment.pipeline import StagePlan, plan
from alignment.service.executors import (
    SBATCH_EXPORTS,
    SLURM_ACTIVE,
    UNREACHABLE,
    Runner,
    SlurmExecutor,
    run_command,
)
from alignment.service.settings import RoundsConfig
from alignment.tracking import pipeline_run_id


class SlurmError(RuntimeError):
    """sbatch refused a script, or a chain of this run is still queued: what happened and what to do."""


@dataclass
class SlurmOptions:
    """What each stage's job asks of Slurm (`alignment run --slurm --nodes ...`)."""

    nodes: int = 1
    gpus_per_node: int = 0
    """0: no GPU request; the pipeline's accelerate_config decides the processes (CPU runs, tests)."""
    partition: str | None = None
    time: str | None = None
    """Slurm's time limit per stage job, e.g. `04:00:00` or `1-00:00:00`."""
    extra: dict[str, str] = field(default_factory=dict)
    """More `#SBATCH --key=value` lines (`--sbatch account=proj`)."""

    def directives(self) -> list[str]:
        options = {"nodes": str(self.nodes), "ntasks-per-node": "1"}
        if self.gpus_per_node:
            options["gpus-per-node"] = str(self.gpus_per_node)
        if self.partition:
            options["partition"] = self.partition
        if self.time:
            options["time"] = self.time
        options.update(self.extra)
        for key, value in options.items():
            if not key or any(c.isspace() for c in key + value) or "\n" in value:
                raise ConfigError(f"Slurm option {key}={value!r}: neither may be empty or hold spaces")
        return [f"#SBATCH --{key}={value}" for key, value in options.items()]


def slurm_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "slurm"


def _stage_command(step: StagePlan) -> tuple[list[str], list[str], bool]:
    """(python + accelerate launch options, `-m alignment.stages.X --config R`, forced) of a planned stage."""
    command = [part for part in step.command if part != "--force"]
    # [python, -m, accelerate.commands.launch, <launch options>, -m, alignment.stages.<stage>, --config, R]
    split = command.index("-m", 3)
    return command[:split], command[split:], "--force" in step.command


def stage_script(
    pipeline: PipelineConfig,
    step: StagePlan,
    options: SlurmOptions,
    env: dict[str, str],
    log_pattern: Path,
) -> str:
    """The sbatch script of one stage: directives, the allow-listed exports, the launch. Every value is quoted."""
    launcher, stage_args, forced = _stage_command(step)
    if any(c in str(log_pattern) for c in '"\n'):
        raise ConfigError(
            f"output_dir {pipeline.output_dir!r}: Slurm's --output cannot name a path with \" or a newline"
        )
    reason = step.reason.replace("\n", " ")
    quote = lambda parts: " ".join(shlex.quote(str(part)) for part in parts)  # noqa: E731
    lines = [
        "#!/usr/bin/env bash",
        f"# Stage {step.stage} of pipeline {pipeline.name!r}, written by `alignment run --slurm` (alignment.slurm).",
        f"# Config hash {step.config_hash} ({step.action}: {reason}); it reads only the resolved config named below.",
        f"#SBATCH --job-name={_job_name(pipeline.name, step.stage)}",
        f'#SBATCH --output="{log_pattern}"',  # sbatch reads a double-quoted value whole, spaces included
        "#SBATCH --open-mode=append",
        "#SBATCH --requeue",
        "#SBATCH --kill-on-invalid-dep=yes",
        *options.directives(),
        "set -euo pipefail",
        *(f"export {key}={shlex.quote(value)}" for key, value in sorted(env.items())),
        *_force_lines(pipeline, step.stage, forced),
        f'echo "== {step.stage}: job $SLURM_JOB_ID, attempt $((${{SLURM_RESTART_COUNT:-0}} + 1)), '
        '$(hostname), $(date -u +%FT%TZ)"',
    ]
    if options.nodes == 1:
        processes = ["--num_processes", str(options.gpus_per_node)] if options.gpus_per_node else []
        lines.append(f'exec {quote(launcher + processes + stage_args)} ${{force[@]+"${{force[@]}}"}}')
    else:
        per_node = options.gpus_per_node or 1
        distributed = ["--num_machines", str(options.nodes), "--num_processes", str(options.nodes * per_node)]
        rank_body = 'exec "$1" "$2" "$3" --machine_rank "$SLURM_NODEID" "${@:4}"'  # python -m accelerate...
        lines += [
            # awk reads every line: `head -n 1` may end first and kill scontrol with SIGPIPE, failing the job
            'main_ip=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | awk "NR == 1")',
            "main_port=${MAIN_PORT:-$((20000 + SLURM_JOB_ID % 20000))}",
            "# one task per node; SLURM_NODEID (the machine rank) is expanded by each task's own shell",
            f"exec srun --kill-on-bad-exit=1 --nodes={options.nodes} --ntasks-per-node=1 "
            f"bash -c {shlex.quote(rank_body)} stage-launch {quote(launcher + distributed)} "
            f'--main_process_ip "$main_ip" --main_process_port "$main_port" {quote(stage_args)} '
            '${force[@]+"${force[@]}"}',
        ]
    return "\n".join(lines) + "\n"


def _force_lines(pipeline: PipelineConfig, stage: str, forced: bool) -> list[str]:
    """`force`, the stage's --force (or nothing), for this attempt of the job.

    A requeued attempt must not discard the checkpoints of the attempt before (which --force on a complete artifact
    does), yet must not keep a stale artifact either. Without --force a stage skips a complete artifact whose
    config hash is its own, and resumes otherwise. So a requeued attempt drops --force when the artifact it replaces
    has another config hash (it resumes), or when that artifact is no longer there as it was at submission (this
    job published its own: nothing left to do). Only a re-run of an artifact with the same config (`--from`, a
    changed input) requeued before it published starts over."""
    if not forced:
        return ["force=()"]
    manifest = pipeline.stage_output_dir(stage) / "MANIFEST.json"
    requeued = '[ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]'
    if not artifacts.is_complete(manifest.parent) or artifacts.read_manifest(manifest.parent).get(
        "config_hash"
    ) != config_hash(pipeline, stage):
        return ["force=(--force)", f"if {requeued}; then force=(); fi  # requeued: resumes its checkpoints"]
    replaced = hashlib.sha256(manifest.read_bytes()).hexdigest()
    current = f"$(sha256sum < {shlex.quote(str(manifest))} 2>/dev/null | cut -d' ' -f1)"
    return [
        f"force=(--force)  # replaces the artifact of MANIFEST.json sha256 {replaced}",
        f'if {requeued} && [ "{current}" != {replaced} ]; then force=(); fi  # published by this job already',
    ]


def _job_name(pipeline_name: str, stage: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in pipeline_name)[:40]
    return f"{safe}-{stage}"


def _write_private(path: Path, text: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)  # an older script may have had wider permissions
        handle.write(text)


def submit(
    config_path: str | Path,
    overrides: list[str] | None,
    from_stage: str | None,
    dry_run: bool,
    options: SlurmOptions,
    runner: Runner = run_command,
) -> int:
    """Plan the pipeline, write a script per stage to run and submit them as a chain (or print them: dry run)."""
    if options.nodes < 1 or options.gpus_per_node < 0:
        raise ConfigError(f"--nodes {options.nodes} / --gpus-per-node {options.gpus_per_node}: out of range")
    pipeline = load_pipeline(config_path, overrides)
    folder = slurm_dir(pipeline.output_dir)
    resolved = folder / "resolved_config.yaml"
    plans = plan(pipeline, resolved, from_stage)
    group = pipeline_run_id(pipeline)
    env = {key: value for key, value in os.environ.items() if key in SBATCH_EXPORTS}
    env.update({"ALIGNMENT_RUN_ID": group, "PYTHONUNBUFFERED": "1"})
    scripts = {
        step.stage: stage_script(pipeline, step, options, env, folder / f"{step.stage}-%j.out")
        for step in plans
        if step.action != "skip"
    }
    if dry_run:
        before = None
        for step in plans:
            print(f"# {step.stage}: {step.action} ({step.reason})")
            if step.stage in scripts:
                dependency = [f"--dependency=afterok:<{before} job>"] if before else []
                command = [
                    "sbatch",
                    "--parsable",
                    "--export=ALL",
                    *dependency,
                    str(folder / f"{step.stage}.sbatch"),
                ]
                print(f"# {shlex.join(command)}\n{scripts[step.stage]}")
                before = step.stage
        return 0

    if runner is run_command and shutil.which("sbatch") is None:
        raise SlurmError("sbatch not found: --slurm submits from a machine with the Slurm client commands")
    _refuse_if_active(folder, runner)
    folder.mkdir(parents=True, exist_ok=True)  # the jobs' --output folder exists before sbatch opens it
    save_resolved(pipeline, folder)
    record: dict[str, Any] = {
        "name": pipeline.name,
        "config": str(resolved),
        "wandb_group": group,
        "submitted": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "options": dataclasses.asdict(options),
        "stages": [],
    }
    previous: str | None = None
    print(f"pipeline {pipeline.name}: {' -> '.join(pipeline.stages)} as a Slurm chain (W&B group {group})")
    try:
        for step in plans:
            entry: dict[str, Any] = {
                "stage": step.stage,
                "action": step.action,
                "reason": step.reason,
                "config_hash": step.config_hash,
                "artifact": str(pipeline.stage_output_dir(step.stage)),
            }
            if step.stage in scripts:
                script = folder / f"{step.stage}.sbatch"
                _write_private(script, scripts[step.stage])
                dependency = [f"--dependency=afterok:{previous}"] if previous else []
                result = runner(["sbatch", "--parsable", "--export=ALL", *dependency, str(script)])
                if result.returncode != 0:
                    submitted = [e["job_id"] for e in record["stages"] if e.get("job_id")]
                    for job in submitted:  # half a chain would leave the later stages unsubmitted
                        runner(["scancel", job])
                    cancelled = (
                        f"; cancelled the jobs submitted before it ({' '.join(submitted)})"
                        if submitted
                        else ""
                    )
                    raise SlurmError(
                        f"sbatch {script} failed ({result.returncode}): {result.stderr.strip()}{cancelled}"
                    )
                job_id = result.stdout.strip().split(";")[0]  # "<job id>[;<cluster>]"
                log = folder / f"{step.stage}-{job_id}.out"
                entry.update(job_id=job_id, after=previous, script=str(script), log=str(log))
                after = f" (after {previous})" if previous else ""
                print(f"{step.stage}: job {job_id}{after}, {step.action} ({step.reason}); log {log}")
                previous = job_id
            else:
                print(f"{step.stage}: skipped ({step.reason})")
            record["stages"].append(entry)
    finally:  # what was submitted stays recorded, even when a later sbatch failed
        artifacts.write_json_atomic(folder / "jobs.json", record)
    print(f"follow it: alignment status {pipeline.output_dir}")
    return 0


def _refuse_if_active(folder: Path, runner: Runner) -> None:
    """A second chain would race the first over the same artifacts and resolved config: refuse while one runs."""
    record = read_jobs(folder.parent) or {}
    active = {}
    for entry in record.get("stages", []):
        if entry.get("job_id"):
            state = job_state(entry["job_id"], runner)[0]
            if state in SLURM_ACTIVE | {UNREACHABLE}:
                active[entry["job_id"]] = f"{entry['stage']} (job {entry['job_id']}, {state})"
    if active:
        raise SlurmError(
            f"this run's Slurm chain is still queued or running: {', '.join(active.values())}. Follow it with "
            f"`alignment status {folder.parent}`, or stop it (scancel {' '.join(active)}) before submitting again."
        )


def read_jobs(output_dir: str | Path) -> dict[str, Any] | None:
    path = slurm_dir(output_dir) / "jobs.json"
    return json.loads(path.read_text()) if path.is_file() else None


def job_state(job_id: str, runner: Runner = run_command) -> tuple[str, str]:
    """(state, detail) of a job: from squeue while queued (detail: its reason, e.g. `Dependency`), then as the
    service's executor reads an ended job (sacct, or `scontrol show job` without accounting; detail: its exit
    code). UNKNOWN once Slurm has forgotten it; UNREACHABLE when squeue failed for another reason than an unknown
    job id."""
    queued = runner(["squeue", "--noheader", "--jobs", job_id, "--format=%T|%r"])
    if queued.returncode == 0 and queued.stdout.strip():
        state, _, reason = queued.stdout.strip().splitlines()[0].partition("|")
        return state.strip(), "" if reason.strip() in ("None", "") else reason.strip()
    if queued.returncode != 0 and "invalid job id" not in queued.stderr.lower():
        return UNREACHABLE, queued.stderr.strip()
    finished, code = SlurmExecutor(RoundsConfig(executor="slurm"), {}, runner).outcome(job_id)
    return finished, "" if finished == "UNKNOWN" else f"exit {code}"


def status(run: str, overrides: list[str] | None = None, runner: Runner = run_command) -> int:
    """Print each stage of a run: its Slurm job and state (a `--slurm` run), or its local status (run.json), and
    whether its artifact is complete. `run` is the output dir or the pipeline config (a path or a shipped name)."""
    if Path(run).is_dir():
        output = Path(run).resolve()
        stages: list[str] = []
    else:
        try:
            pipeline = load_pipeline(find_config(run, "pipelines"), overrides)
        except ConfigError as error:
            raise ConfigError(f"{run}: neither a run's output dir nor a pipeline config ({error})") from error
        output, stages = Path(pipeline.output_dir), list(pipeline.stages)
    record = read_jobs(output)
    local = output / "run.json"
    if record is None and not local.is_file() and not stages:
        raise ConfigError(f"{output}: no run recorded here (neither slurm/jobs.json nor run.json)")
    rows: list[tuple[str, ...]] = []
    if record is not None:
        print(f"{record['name']}: Slurm chain submitted {record['submitted']} ({output})")
        for entry in record["stages"]:
            job = entry.get("job_id")
            state, detail = job_state(job, runner) if job else ("skipped", "")
            complete = artifacts.is_complete(Path(entry["artifact"]))
            shown = state + (f" ({detail})" if detail else "")
            where = entry.get("log") or entry["reason"]
            rows.append((entry["stage"], job or "-", shown, "complete" if complete else "-", where))
    else:
        known = json.loads(local.read_text()) if local.is_file() else {"name": output.name, "stages": []}
        print(f"{known['name']}: local run ({output})")
        status_of = {entry["stage"]: entry["status"] for entry in known["stages"]}
        for stage in stages or list(status_of):
            complete = artifacts.is_complete(output / stage)
            log = str(output / "logs" / f"{stage}.log")
            rows.append((stage, "-", status_of.get(stage, "not run"), "complete" if complete else "-", log))
    header = ("stage", "job", "state", "artifact", "log")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    return 0


def parse_sbatch_options(items: list[str]) -> dict[str, str]:
    """`--sbatch account=proj --sbatch qos=high` -> {"account": "proj", "qos": "high"}."""
    parsed = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator:
            raise ConfigError(f"--sbatch {item!r}: expected KEY=VALUE (an sbatch option without its --)")
        parsed[key.strip().lstrip("-")] = value.strip()
    return parsed
