"""Where a round's pipeline runs: `local` (this machine, `alignment run` -> `accelerate launch` per stage) or
`slurm` (an sbatch script written from launch/slurm/service_round.sbatch, submitted with sbatch, followed with
squeue and sacct).

Both record a job handle in the round (`local:<host>:<process group>` / `slurm:<job id>`) before waiting, so a
worker that resumes a round after another died first deals with the job already there: a local process group
left behind on this host is killed (the pipeline then resumes from its checkpoints), a Slurm job still queued or
running is followed instead of submitted again, and one that already ended is still recorded and its outcome read.

Both stop the round's work once the worker's `alive()` turns False (its lease is lost): the local process group is
killed, the Slurm job cancelled, and `run` returns -9 only once they no longer run.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alignment.service.settings import RoundsConfig

Runner = Callable[[list[str]], subprocess.CompletedProcess]
"""Runs a command line and returns its result (stdout as text); the Slurm executor's only contact with Slurm."""


def run_command(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def pipeline_command(round_yaml: Path) -> list[str]:
    """The command that runs a round's pipeline: every stage under accelerate launch (alignment.pipeline)."""
    return [sys.executable, "-m", "alignment.cli", "run", str(round_yaml)]


class LocalExecutor:
    """Runs the pipeline as a child process group on this machine, its output in `<round dir>/round.log`."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def stop_leftover(self, previous_job: str | None) -> None:
        """Before a resumed round takes its directory's lock: kill the pipeline a dead worker left on this host."""
        _kill_leftover(previous_job)

    def run(
        self,
        round_yaml: Path,
        log_path: Path,
        previous_job: str | None,
        record_job: Callable,
        alive: Callable,
        keep_fds: tuple[int, ...] = (),
    ) -> int:
        """The pipeline's exit code, or -9 once `alive()` turned False: then its process group is killed and gone.

        `keep_fds` (the round directory's lock) stay open in the pipeline process, so that the lock is held while
        the pipeline runs, even after this worker died."""
        with open(log_path, "a") as log:
            log.write(f"$ {shlex.join(pipeline_command(round_yaml))}\n")
            log.flush()
            process = subprocess.Popen(
                pipeline_command(round_yaml),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=os.getcwd(),
                start_new_session=True,  # its own process group: killed whole if the round is lost
                pass_fds=keep_fds,
            )
            try:
                record_job(f"local:{socket.gethostname()}:{process.pid}")
                while process.poll() is None and alive():
                    time.sleep(0.5)
            finally:  # lost (or recording the job failed): nothing of this attempt may keep running
                if process.poll() is None or not alive():
                    _kill_group(process.pid, reap=process.wait)
        return -9 if not alive() else process.returncode


def _kill_group(pgid: int, wait: float = 10.0, reap: Callable | None = None) -> None:
    """SIGKILL a process group and wait (up to `wait` s) until none of its processes is left; `reap` collects
    the group's leader when it is this process's child (else it stays a zombie, still in the group)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        if reap is not None:
            reap()
        return
    if reap is not None:
        reap()
    deadline = time.time() + wait
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def _kill_leftover(previous_job: str | None) -> None:
    """Kill the process group a dead worker left running on this host (same round, same output dir).

    A group left on another host is out of reach: it holds the round directory's lock (the pipeline process
    inherits it) until it ends, and the resumed round waits for that lock."""
    if not previous_job or not previous_job.startswith("local:"):
        return
    _, host, pgid = previous_job.split(":")
    if host != socket.gethostname():
        return
    _kill_group(int(pgid))


# --------------------------------------------------------------------------------------------------- slurm
SBATCH_EXPORTS = frozenset(
    {
        "ALIGNMENT_HOME", "ALIGNMENT_RUN_ID", "ALIGNMENT_PYTHON", "ALIGNMENT_REPO", "ALIGNMENT_SERVICE_SNAPSHOTS",
        "ALIGNMENT_DATA_DIR", "WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_DIR", "WANDB_SILENT",
        "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "HF_DATASETS_OFFLINE",
    }
)  # fmt: skip
"""The variables a round's sbatch script exports in clear: none is a secret. Everything else the job needs (e.g.
WANDB_API_KEY, HF_TOKEN, the service's database URL) reaches it from the submitting worker's environment through
sbatch's --export=ALL, never through a file."""
SLURM_ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"}
UNREACHABLE = "UNREACHABLE"
"""`SlurmExecutor.state` when squeue failed for another reason than an unknown job id."""


def render_sbatch(
    template: str, round_yaml: Path, log_dir: Path, job_name: str, options: dict[str, str], env: dict
) -> str:
    """The template with this round's #SBATCH lines inserted after the shebang and its variables exported."""
    lines = template.splitlines()
    if not lines or not lines[0].startswith("#!"):
        raise ValueError("the sbatch template must start with a #! line")
    directives = [f"#SBATCH --job-name={job_name}", f"#SBATCH --output={log_dir}/slurm-%j.out"]
    directives += [f"#SBATCH --{key}={value}" for key, value in sorted(options.items())]
    exports = [f"export {key}={shlex.quote(value)}" for key, value in sorted(env.items())]
    exports.append(f"export ROUND_CONFIG={shlex.quote(str(round_yaml))}")
    body = "\n".join(lines[1:])
    marker = "# --- round environment ---"
    if marker not in body:
        raise ValueError(f"the sbatch template needs a line {marker!r} where the round's variables go")
    body = body.replace(marker, marker + "\n" + "\n".join(exports), 1)
    return "\n".join([lines[0], *directives, body]) + "\n"


class SlurmExecutor:
    """Submits the round as one Slurm job and follows it until it leaves the queue."""

    def __init__(
        self, config: RoundsConfig, env: dict[str, str], runner: Runner = run_command, poll: float = 15.0
    ):
        self.config, self.env, self.runner, self.poll = config, env, runner, poll

    def script(self, round_yaml: Path, log_dir: Path, job_name: str) -> Path:
        """`round.sbatch` (mode 0600) exporting only the `SBATCH_EXPORTS` variables: no secret is written."""
        template = Path(self.config.slurm_template).read_text()
        passed = {k: v for k, v in self.env.items() if k in SBATCH_EXPORTS}
        text = render_sbatch(template, round_yaml, log_dir, job_name, self.config.slurm_options, passed)
        path = log_dir / "round.sbatch"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            os.fchmod(handle.fileno(), 0o600)  # an older script of the round may have had wider permissions
            handle.write(text)
        return path

    def submit(self, script: Path) -> str:
        # --export=ALL (also sbatch's default): the job inherits this worker's environment, secrets included,
        # through Slurm rather than through any file.
        result = self.runner(["sbatch", "--parsable", "--export=ALL", str(script)])
        if result.returncode != 0:
            raise RuntimeError(f"sbatch {script} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout.strip().split(";")[0]  # "<job id>[;<cluster>]"

    def state(self, job_id: str) -> str | None:
        """The job's state while squeue lists it, None once it does not; `UNREACHABLE` when squeue failed otherwise
        (the controller did not answer): that says nothing about the job, the caller asks again."""
        result = self.runner(["squeue", "--noheader", "--jobs", job_id, "--format=%T"])
        lines = result.stdout.strip().splitlines()
        if result.returncode == 0:
            return lines[0].strip() if lines else None
        return None if "invalid job id" in result.stderr.lower() else UNREACHABLE

    def outcome(self, job_id: str) -> tuple[str, int]:
        """(state, exit code) of a job squeue no longer lists: exit code 0 when it COMPLETED with exit 0, else its
        exit code (or 1). The state may still be an active one (accounting lags behind squeue for a moment) or
        UNKNOWN (Slurm has forgotten the job and keeps no accounting).

        From sacct; on a cluster without accounting storage (sacct fails) from `scontrol show job`, which knows
        a finished job for MinJobAge seconds (300 by default)."""
        result = self.runner(["sacct", "--noheader", "--allocations", "--parsable2", "--jobs", job_id,
                              "--format=State,ExitCode"])  # fmt: skip
        line = (
            result.stdout.strip().splitlines()[0] if result.returncode == 0 and result.stdout.strip() else ""
        )
        state, _, code = line.partition("|")
        if not line:
            shown = self.runner(["scontrol", "show", "job", "--oneliner", job_id])
            fields = dict(item.split("=", 1) for item in shown.stdout.split() if "=" in item)
            state, code = fields.get("JobState", ""), fields.get("ExitCode", "")
        state = state.split()[0] if state.strip() else "UNKNOWN"  # "CANCELLED by 0" -> CANCELLED
        if state == "COMPLETED" and code.split(":")[0] == "0":
            return state, 0
        try:
            return state, int(code.split(":")[0]) or 1
        except ValueError:
            return state, 1

    def exit_code(self, job_id: str) -> int:
        """The exit code of a job that has left the queue (see `outcome`)."""
        return self.outcome(job_id)[1]

    def wait(self, job_id: str, alive: Callable) -> tuple[str, int]:
        """Follow the job until it ended: its (state, exit code); ("LOST", -9) once `alive()` turned False, after
        cancelling the job and waiting (up to a minute) until Slurm no longer runs it."""
        while True:
            state = self.state(job_id)
            if state is None:  # gone from squeue: it ended, or accounting still shows it ending
                state, code = self.outcome(job_id)
                if state not in SLURM_ACTIVE:
                    return state, code
            if not alive():
                self.cancel(job_id)
                return "LOST", -9
            time.sleep(self.poll)

    def cancel(self, job_id: str, wait: float = 60.0) -> None:
        """scancel the job and wait (up to `wait` s) until squeue no longer shows it active."""
        self.runner(["scancel", job_id])
        deadline = time.time() + wait
        while self.state(job_id) in SLURM_ACTIVE | {UNREACHABLE} and time.time() < deadline:
            time.sleep(min(self.poll, 1.0))

    def stop_leftover(self, previous_job: str | None) -> None:
        """Nothing to stop: a resumed round follows the job its dead worker submitted (`run`)."""

    def run(
        self,
        round_yaml: Path,
        log_path: Path,
        previous_job: str | None,
        record_job: Callable,
        alive: Callable,
        keep_fds: tuple[int, ...] = (),
    ) -> int:
        """The job's exit code (or -9 once `alive()` turned False: the job was cancelled). `keep_fds` is unused:
        the job runs on another node, the worker holds the round directory's lock while it follows the job.

        A resumed round's previous job stays recorded and is followed when still queued or running. When it ended
        before this worker looked: a success is the round's result; a failure, or an outcome Slurm no longer
        knows, is submitted again (the pipeline skips complete stages and resumes from checkpoints)."""
        if previous_job and previous_job.startswith("slurm:"):
            job_id = previous_job.split(":", 1)[1]
            record_job(previous_job)
            was_active = self.state(job_id) in SLURM_ACTIVE | {UNREACHABLE}
            state, code = self.wait(job_id, alive)
            if was_active or code in (0, -9):
                return code
            with open(log_path, "a") as log:
                log.write(
                    f"Slurm job {job_id} of an earlier attempt ended {state} (exit {code}): submitting again\n"
                )
        script = self.script(round_yaml, log_path.parent, f"alignment-{round_yaml.parent.name}")
        job_id = self.submit(script)
        try:
            record_job(f"slurm:{job_id}")
        except BaseException:  # this worker no longer holds the round: its job must not run
            self.cancel(job_id)
            raise
        with open(log_path, "a") as log:
            log.write(
                f"submitted {script} as Slurm job {job_id}; output {log_path.parent}/slurm-{job_id}.out\n"
            )
        return self.wait(job_id, alive)[1]


def make_executor(config: RoundsConfig, env: dict[str, str], **kwargs: Any) -> LocalExecutor | SlurmExecutor:
    if config.executor == "slurm":
        return SlurmExecutor(config, env, **kwargs)
    return LocalExecutor(env)
