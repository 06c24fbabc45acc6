"""`alignment run --slurm` against a real single-node Slurm (tests/service/slurm.py): the smoke pipeline becomes
three jobs chained with afterok, all complete, and overrides with `*` and spaces reach the stages intact; a second
submission skips the complete stages. The multi-node launch lines (the generated one and
launch/slurm/multi_node.sbatch) run in bash with stub srun / scontrol / launcher: every argument arrives whole."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest
import yaml

from alignment.service.executors import run_command
from tests.helpers import REPO, fault, run_cli, run_cli_in_process, write_config

pytestmark = pytest.mark.integration

ODD_TAGS = ["mix:0.5*reward+0.5*rule:tasks", "two words *"]
ODD_OVERRIDE = "tracking.tags=[mix:0.5*reward+0.5*rule:tasks, two words *]"
"""A free-text field every stage records (tracking.tags, in each artifact's resolved_config.yaml and W&B run)."""


def _job(job_id: str) -> dict[str, str]:
    shown = run_command(["scontrol", "show", "job", "--oneliner", job_id]).stdout
    return dict(item.split("=", 1) for item in shown.split() if "=" in item)


def test_the_smoke_pipeline_runs_on_slurm_as_a_chain_of_three_jobs(
    slurm_conf: Path,
    tmp_path: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.setenv("SLURM_CONF", str(slurm_conf))
    config = write_config(tmp_path)
    # A file the `*` of the odd override would match if a shell ever globbed it.
    (tmp_path / "mix:0.5-reward+0.5-rule:tasks").touch()
    secret = "hf_not_a_real_token_0123456789"
    run_dir = tmp_path / "slurm run"  # scripts, logs and artifacts under a path with a space
    overrides = [f"output_dir={run_dir}", "dpo.beta=0.2", ODD_OVERRIDE]
    submitted = run_cli("run", str(config), "--slurm", *overrides, cwd=tmp_path, env={"HF_TOKEN": secret})
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    record = json.loads((run_dir / "slurm" / "jobs.json").read_text())
    jobs = {entry["stage"]: entry["job_id"] for entry in record["stages"]}
    assert list(jobs) == ["sft", "reward", "dpo"] and all(jobs.values())

    # Chained as Slurm itself recorded it, while the later jobs still wait (sft takes several seconds).
    assert _job(jobs["reward"])["Dependency"].startswith(f"afterok:{jobs['sft']}"), _job(jobs["reward"])
    assert _job(jobs["dpo"])["Dependency"].startswith(f"afterok:{jobs['reward']}")
    assert [entry["after"] for entry in record["stages"]] == [None, jobs["sft"], jobs["reward"]]
    code, shown, _ = run_cli_in_process(capsys, "status", str(run_dir))
    assert code == 0 and "Dependency" in shown.splitlines()[-1], shown  # dpo waits on its dependency
    # A second chain would race this one over the same artifacts: refused while this one is queued or running.
    code, _, error = run_cli_in_process(capsys, "run", str(config), "--slurm", *overrides)
    assert code == 2 and "still queued or running" in error and f"scancel {jobs['sft']}" in error, error

    deadline = time.time() + 240
    while time.time() < deadline and _job(jobs["dpo"]).get("JobState") not in (
        "COMPLETED",
        "FAILED",
        "CANCELLED",
    ):
        time.sleep(2)
    states = {stage: _job(job) for stage, job in jobs.items()}
    logs = {entry["stage"]: Path(entry["log"]) for entry in record["stages"]}
    tails = {stage: log.read_text()[-2000:] if log.is_file() else "(no log)" for stage, log in logs.items()}
    assert all(s["JobState"] == "COMPLETED" and s["ExitCode"] == "0:0" for s in states.values()), (
        states,
        tails,
    )
    # each started once the one before had ended
    assert states["sft"]["EndTime"] <= states["reward"]["StartTime"] <= states["reward"]["EndTime"]
    assert states["reward"]["EndTime"] <= states["dpo"]["StartTime"]
    for stage in jobs:
        assert (run_dir / stage / "MANIFEST.json").is_file()  # complete artifacts
        resolved = yaml.safe_load((run_dir / stage / "resolved_config.yaml").read_text())
        assert resolved["tracking"]["tags"] == ODD_TAGS  # the override arrived whole, unglobbed
        script = run_dir / "slurm" / f"{stage}.sbatch"
        assert stat.S_IMODE(script.stat().st_mode) == 0o600 and secret not in script.read_text()
        assert "#SBATCH --requeue" in script.read_text()
        assert f"== {stage}: job {jobs[stage]}, attempt 1" in logs[stage].read_text()
    assert yaml.safe_load((run_dir / "dpo" / "resolved_config.yaml").read_text())["dpo"]["beta"] == 0.2

    code, shown, _ = run_cli_in_process(capsys, "status", str(config), *overrides)
    lines = shown.splitlines()
    for stage, line in zip(jobs, lines[-3:], strict=True):
        assert line.split()[:4] == [stage, jobs[stage], "COMPLETED", "(exit"] and "complete" in line, shown

    # Submitted again: every stage is complete with the same config, nothing goes to Slurm.
    again = run_cli("run", str(config), "--slurm", *overrides, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("skipped (complete with the same config and inputs)") == 3, again.stdout
    assert not any(
        e.get("job_id") for e in json.loads((run_dir / "slurm" / "jobs.json").read_text())["stages"]
    )


def _wait_for(job_id: str, states: tuple[str, ...], timeout: float = 180) -> dict[str, str]:
    deadline = time.time() + timeout
    while time.time() < deadline and _job(job_id).get("JobState") not in states:
        time.sleep(1)
    return _job(job_id)


def test_a_requeued_stage_job_resumes_from_its_checkpoint(
    slurm_conf: Path,
    tmp_path: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.setenv("SLURM_CONF", str(slurm_conf))
    config = write_config(tmp_path, stages=["sft", "reward"])
    # The stage is killed (SIGKILL, as on a lost node) once checkpoint-4 of its 8 steps is complete.
    submitted = run_cli("run", str(config), "--slurm", cwd=tmp_path, env=fault("checkpoint:4"))
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    run_dir = tmp_path / "run"
    entry, after = json.loads((run_dir / "slurm" / "jobs.json").read_text())["stages"]
    job_id, log = entry["job_id"], Path(entry["log"])
    assert _wait_for(job_id, ("FAILED", "COMPLETED"))["JobState"] == "FAILED", log.read_text()[-3000:]
    assert not (run_dir / "sft" / "MANIFEST.json").exists()
    # the stage after a failed one is cancelled, not left pending forever
    assert _wait_for(after["job_id"], ("CANCELLED",), timeout=60)["JobState"] == "CANCELLED"

    requeued = run_command(["scontrol", "requeue", job_id])  # what Slurm does to a preempted --requeue job
    assert requeued.returncode == 0, requeued.stderr
    # Slurm holds a requeued job back for about two minutes (its BeginTime); the test does not wait for that.
    run_command(["scontrol", "update", f"JobId={job_id}", "StartTime=now"])
    shown = _wait_for(job_id, ("COMPLETED", "FAILED"))
    text = log.read_text()
    assert shown["JobState"] == "COMPLETED" and shown["Restarts"] == "1", (shown, text[-3000:])
    assert f"== sft: job {job_id}, attempt 1" in text and f"== sft: job {job_id}, attempt 2" in text
    assert "resuming from" in text.split("attempt 2")[1] and "checkpoint-4" in text.split("attempt 2")[1]
    assert (run_dir / "sft" / "MANIFEST.json").is_file()
    code, out, _ = run_cli_in_process(capsys, "status", str(run_dir))
    sft_line, reward_line = out.splitlines()[-2:]
    assert code == 0 and sft_line.split()[:3] == ["sft", job_id, "COMPLETED"], out
    assert reward_line.split()[:3] == ["reward", after["job_id"], "CANCELLED"], out


def _stubs(folder: Path) -> Path:
    """srun (drops its options, runs the rest as node 1), scontrol (two hosts) and a launcher that writes its
    arguments one per line: what each node's process would be given."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    scripts = {
        "srun": '#!/usr/bin/env bash\nwhile [[ "$1" == --* ]]; do shift; done\nSLURM_NODEID=1 exec "$@"\n',
        "scontrol": "#!/usr/bin/env bash\nprintf 'node-a\\nnode-b\\n'\n",
        "accelerate": f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > {folder}/argv\n',
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def _bash(script: Path, args: list[str], folder: Path, **env: str) -> list[str]:
    import os
    import subprocess

    environment = {
        **os.environ,
        "PATH": f"{_stubs(folder)}:{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "node-[a-b]",
    }
    environment |= {"SLURM_NNODES": "2", "SLURM_JOB_ID": "4242", **env}
    (folder / "mix:0.5-reward+0.5-rule:tasks").touch()  # what `*` would glob to
    result = subprocess.run(
        ["bash", str(script), *args], cwd=folder, env=environment, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return (folder / "argv").read_text().splitlines()


def test_multi_node_sbatch_passes_overrides_with_spaces_and_stars_intact(tmp_path: Path) -> None:
    odd = ["ppo.reward_model=mix:0.5*reward+0.5*rule:tasks", "tracking.tags=[a b, c]"]
    argv = _bash(REPO / "launch/slurm/multi_node.sbatch", ["ppo", "my pipeline.yaml", *odd], tmp_path)
    assert argv == [
        "launch", "--machine_rank", "1", "--config_file", "configs/accelerate/multi_node.yaml",
        "--num_machines", "2", "--num_processes", "16", "--main_process_ip", "node-a", "--main_process_port",
        "29500", "-m", "alignment.stages.ppo", "--config", "my pipeline.yaml", *odd,
    ]  # fmt: skip
    text = (REPO / "launch/slurm/multi_node.sbatch").read_text()
    assert "#SBATCH --output=%x-%j.out" in text and "$*" not in text  # no folder that may not exist yet


def test_a_generated_multi_node_stage_script_gives_each_node_its_rank_and_every_argument_whole(
    tmp_path: Path,
) -> None:
    from alignment.config import PipelineConfig
    from alignment.pipeline import StagePlan
    from alignment.slurm import SlurmOptions, stage_script

    launcher = tmp_path / "bin" / "accelerate"  # stands in for python: records what it was given
    command = [str(launcher), "-m", "accelerate.commands.launch", "--config_file", "/cfg dir/zero3.yaml",
               "-m", "alignment.stages.dpo", "--config", "/runs/odd *name/slurm/resolved_config.yaml", "--force"]  # fmt: skip
    step = StagePlan("dpo", command, "abc", "run", "config changed", tmp_path / "dpo.log")
    options = SlurmOptions(nodes=2, gpus_per_node=4, partition="gpu", time="04:00:00")
    text = stage_script(
        PipelineConfig(name="odd name*"), step, options, {"HF_HOME": "/h f"}, tmp_path / "d-%j.out"
    )
    assert "#SBATCH --gpus-per-node=4" in text and "#SBATCH --job-name=odd-name--dpo" in text
    script = tmp_path / "dpo.sbatch"
    script.write_text(text)
    expected = [
        "-m", "accelerate.commands.launch", "--machine_rank", "1", "--config_file", "/cfg dir/zero3.yaml",
        "--num_machines", "2", "--num_processes", "8", "--main_process_ip", "node-a", "--main_process_port",
        str(20000 + 4242 % 20000), "-m", "alignment.stages.dpo", "--config", "/runs/odd *name/slurm/resolved_config.yaml",
    ]  # fmt: skip
    assert _bash(script, [], tmp_path) == [*expected, "--force"]
    (tmp_path / "bin").rename(tmp_path / "bin-first")
    assert _bash(script, [], tmp_path, SLURM_RESTART_COUNT="1") == expected  # requeued: resumes


def test_a_requeued_forced_stage_keeps_force_only_while_the_artifact_it_replaces_is_still_there(
    tmp_path: Path,
) -> None:
    from alignment.config import PipelineConfig, config_hash
    from alignment.pipeline import StagePlan
    from alignment.slurm import SlurmOptions, stage_script

    pipeline = PipelineConfig(name="rerun", output_dir=str(tmp_path / "run"))
    artifact = tmp_path / "run" / "sft"
    artifact.mkdir(parents=True)
    (artifact / "MANIFEST.json").write_text(json.dumps({"config_hash": config_hash(pipeline, "sft")}))
    launcher = tmp_path / "bin" / "accelerate"
    command = [str(launcher), "-m", "accelerate.commands.launch", "--config_file", "/c.yaml",
               "-m", "alignment.stages.sft", "--config", "/r.yaml", "--force"]  # fmt: skip
    step = StagePlan("sft", command, config_hash(pipeline, "sft"), "run", "--from sft", tmp_path / "sft.log")
    script = tmp_path / "sft.sbatch"
    script.write_text(stage_script(pipeline, step, SlurmOptions(), {}, tmp_path / "sft-%j.out"))
    expected = ["-m", "accelerate.commands.launch", "--config_file", "/c.yaml", "-m", "alignment.stages.sft",
                "--config", "/r.yaml"]  # fmt: skip
    assert _bash(script, [], tmp_path) == [
        *expected,
        "--force",
    ]  # first attempt: re-runs the complete artifact
    (tmp_path / "bin").rename(tmp_path / "bin-1")
    # requeued before it published: the same-config artifact is still there, and a run without --force would
    # take it as done
    assert _bash(script, [], tmp_path, SLURM_RESTART_COUNT="1") == [*expected, "--force"]
    (tmp_path / "bin").rename(tmp_path / "bin-2")
    (artifact / "MANIFEST.json").write_text(json.dumps({"config_hash": "published by this job"}))
    assert _bash(script, [], tmp_path, SLURM_RESTART_COUNT="1") == expected  # published: nothing to redo


def test_a_refused_sbatch_cancels_the_jobs_submitted_before_it(tmp_path: Path) -> None:
    import subprocess

    from alignment.slurm import SlurmError, SlurmOptions, submit

    commands: list[list[str]] = []

    def runner(command: list[str]) -> subprocess.CompletedProcess:
        commands.append(command)
        refused = command[0] == "sbatch" and command[-1].endswith("reward.sbatch")
        stdout = "" if refused else "101;cluster\n"
        return subprocess.CompletedProcess(
            command, 1 if refused else 0, stdout, "invalid partition" * refused
        )

    options = SlurmOptions(gpus_per_node=8, partition="gpu", time="04:00:00", extra={"account": "proj"})
    with pytest.raises(
        SlurmError, match="invalid partition; cancelled the jobs submitted before it \\(101\\)"
    ):
        submit(write_config(tmp_path), [], None, False, options, runner=runner)
    assert commands[0] == ["sbatch", "--parsable", "--export=ALL", str(tmp_path / "run/slurm/sft.sbatch")]
    assert commands[1][3] == "--dependency=afterok:101" and commands[2] == ["scancel", "101"]
    script = (tmp_path / "run/slurm/sft.sbatch").read_text()
    for line in ("--gpus-per-node=8", "--partition=gpu", "--time=04:00:00", "--account=proj"):
        assert f"#SBATCH {line}\n" in script
    assert "--num_processes 8 -m alignment.stages.sft" in script  # one process per GPU on the node
    record = json.loads((tmp_path / "run/slurm/jobs.json").read_text())
    assert [entry.get("job_id") for entry in record["stages"]] == ["101"]
