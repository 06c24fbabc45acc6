"""The Slurm executor against a real single-node Slurm (tests/service/slurm.py): the generated sbatch script is
accepted by sbatch and runs the round's pipeline command; success, failure, and following a job that is already
queued after a worker died, and one that ended before the worker looked (recorded, its outcome read), all
through the real sbatch / squeue / scontrol."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from alignment.service.executors import SLURM_ACTIVE, SlurmExecutor, run_command
from alignment.service.settings import RoundsConfig
from tests.helpers import REPO


def _executor(commands: list[list[str]]) -> SlurmExecutor:
    def recording(command: list[str]):  # noqa: ANN202
        commands.append(command)
        return run_command(command)

    config = RoundsConfig(executor="slurm", slurm_template=str(REPO / "launch/slurm/service_round.sbatch"))
    env = {"ALIGNMENT_PYTHON": sys.executable, "ALIGNMENT_REPO": str(REPO)}
    return SlurmExecutor(config, env, runner=recording, poll=0.5)


def test_a_round_runs_as_a_real_slurm_job(
    slurm_conf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_CONF", str(slurm_conf))
    round_dir = tmp_path / "round-1"
    round_dir.mkdir()
    round_yaml = round_dir / "round.yaml"
    round_yaml.write_text(f"name: slurm-round\noutput_dir: {round_dir / 'run'}\nstages: []\n")
    commands: list[list[str]] = []
    jobs: list[str] = []
    code = _executor(commands).run(round_yaml, round_dir / "round.log", None, jobs.append, lambda: True)
    job_id = jobs[0].split(":")[1]
    output = (round_dir / f"slurm-{job_id}.out").read_text()
    assert code == 0, output
    assert (round_dir / "run" / "run.json").is_file() and "slurm-round: complete" in output
    assert commands[0][:2] == ["sbatch", "--parsable"] and sum(c[0] == "sbatch" for c in commands) == 1
    assert any(c[0] == "squeue" for c in commands)

    # The pipeline fails (its config is gone): the job's exit code comes back.
    missing = round_dir / "missing.yaml"
    code = _executor([]).run(missing, round_dir / "round.log", None, jobs.append, lambda: True)
    assert code == 2


def _submit_held(round_yaml: Path, folder: Path) -> str:
    """A dead worker's job, held in the queue until the test releases it: it cannot end before the worker looks."""
    executor = _executor([])
    script = executor.script(round_yaml, folder, "alignment-followed")
    result = run_command(["sbatch", "--parsable", "--hold", str(script)])
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def _job_state(job_id: str) -> str:
    shown = run_command(["scontrol", "show", "job", "--oneliner", job_id]).stdout
    return dict(item.split("=", 1) for item in shown.split() if "=" in item).get("JobState", "")


def test_a_resumed_round_follows_its_queued_job_instead_of_submitting_again(
    slurm_conf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_CONF", str(slurm_conf))
    round_yaml = tmp_path / "round.yaml"
    round_yaml.write_text(f"name: followed\noutput_dir: {tmp_path / 'run'}\nstages: []\n")
    job_id = _submit_held(round_yaml, tmp_path)
    commands: list[list[str]] = []
    jobs: list[str] = []
    looked: list[str] = []

    def alive() -> bool:  # called while the worker follows the job: only then does the job go on
        if not looked:
            looked.append(_job_state(job_id))
            run_command(["scontrol", "release", job_id])
        return True

    code = _executor(commands).run(round_yaml, tmp_path / "round.log", f"slurm:{job_id}", jobs.append, alive)
    assert looked == ["PENDING"]
    assert code == 0 and jobs == [f"slurm:{job_id}"]
    assert not any(command[0] == "sbatch" for command in commands)
    assert (tmp_path / "run" / "run.json").is_file()


def test_a_job_that_ended_before_the_worker_looked_is_recorded_and_its_outcome_read(
    slurm_conf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_CONF", str(slurm_conf))
    round_yaml = tmp_path / "round.yaml"
    round_yaml.write_text(f"name: quick\noutput_dir: {tmp_path / 'run'}\nstages: []\n")
    job_id = _submit_held(round_yaml, tmp_path)
    run_command(["scontrol", "release", job_id])
    deadline = time.time() + 60
    while _job_state(job_id) != "COMPLETED" and time.time() < deadline:  # it ends before the worker looks
        time.sleep(0.2)
    assert _job_state(job_id) == "COMPLETED"
    commands: list[list[str]] = []
    jobs: list[str] = []
    code = _executor(commands).run(
        round_yaml, tmp_path / "round.log", f"slurm:{job_id}", jobs.append, lambda: True
    )
    assert code == 0 and jobs == [f"slurm:{job_id}"]  # still the round's job, its success read
    assert not any(command[0] == "sbatch" for command in commands)

    # A job of an earlier attempt that failed before the worker looked: recorded, then submitted again.
    broken = tmp_path / "broken.yaml"
    failed_id = _submit_held(broken, tmp_path)  # its config does not exist: the pipeline exits 2
    run_command(["scontrol", "release", failed_id])
    deadline = time.time() + 60
    while _job_state(failed_id) != "FAILED" and time.time() < deadline:
        time.sleep(0.2)
    assert _job_state(failed_id) == "FAILED"
    jobs.clear()
    code = _executor([]).run(
        round_yaml, tmp_path / "round.log", f"slurm:{failed_id}", jobs.append, lambda: True
    )
    assert code == 0 and jobs[0] == f"slurm:{failed_id}" and len(jobs) == 2 and jobs[1] != jobs[0]
    assert (
        f"Slurm job {failed_id} of an earlier attempt ended FAILED (exit 2)"
        in (tmp_path / "round.log").read_text()
    )


def test_a_worker_that_lost_its_round_cancels_the_slurm_job_and_returns_once_it_no_longer_runs(
    slurm_conf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_CONF", str(slurm_conf))
    template = tmp_path / "long.sbatch"
    template.write_text("#!/usr/bin/env bash\n# --- round environment ---\nsleep 300\n")
    config = RoundsConfig(executor="slurm", slurm_template=str(template))
    executor = SlurmExecutor(config, {}, runner=run_command, poll=0.2)
    jobs: list[str] = []
    running: list[bool] = []

    def alive() -> bool:  # the lease is lost once the job runs
        running.append(bool(jobs) and _job_state(jobs[0].split(":")[1]) == "RUNNING")
        return not running[-1]

    code = executor.run(tmp_path / "round.yaml", tmp_path / "round.log", None, jobs.append, alive)
    job_id = jobs[0].split(":")[1]
    assert code == -9 and running[-1]
    assert executor.state(job_id) not in SLURM_ACTIVE  # gone from the queue before run returned
    assert _job_state(job_id) == "CANCELLED"
