"""The Slurm executor against a real single-node Slurm (tests/service/slurm.py): the generated sbatch script is
accepted by sbatch and runs the round's pipeline command; success, failure, and following a job that is already
queued after a worker died, all through the real sbatch / squeue / scontrol."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from alignment.service.executors import SlurmExecutor, run_command
from alignment.service.settings import RoundsConfig
from tests.helpers import REPO
from tests.service.slurm import TemporarySlurm


@pytest.fixture(scope="module")
def slurm_conf() -> Iterator[Path]:
    try:
        cluster = TemporarySlurm()
        conf = cluster.__enter__()
    except RuntimeError as error:
        pytest.fail(str(error))
    try:
        yield conf
    finally:
        cluster.__exit__()


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


def test_a_resumed_round_follows_its_queued_job_instead_of_submitting_again(
    slurm_conf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_CONF", str(slurm_conf))
    round_yaml = tmp_path / "round.yaml"
    round_yaml.write_text(f"name: followed\noutput_dir: {tmp_path / 'run'}\nstages: []\n")
    first = _executor([])
    job_id = first.submit(first.script(round_yaml, tmp_path, "alignment-followed"))  # the dead worker's job
    commands: list[list[str]] = []
    jobs: list[str] = []
    code = _executor(commands).run(
        round_yaml, tmp_path / "round.log", f"slurm:{job_id}", jobs.append, lambda: True
    )
    assert code == 0 and jobs == [f"slurm:{job_id}"]
    assert not any(command[0] == "sbatch" for command in commands)
    assert (tmp_path / "run" / "run.json").is_file()
