"""Rounds: the API, the trigger rule, claims and leases on both backends, the round's pipeline config, and the
executors' command lines (Slurm: the sbatch script and the sbatch / squeue / sacct calls)."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from alignment.service import rounds
from alignment.service.executors import SlurmExecutor, _kill_leftover
from alignment.service.settings import ServiceConfig, load_service_config
from alignment.service.store import datasets, open_store
from alignment.service.worker import round_pipeline
from tests.helpers import REPO
from tests.service.helpers import ServerProcess, pair


def test_rounds_api_queues_and_shows_rounds(server: ServerProcess) -> None:
    name = server.dataset("rounds-api")
    with server.client("admin") as admin, server.client("read") as reader:
        created = admin.post("/v1/rounds", json={"dataset": name})
        assert created.status_code == 201, created.text
        round_ = created.json()
        assert (round_["status"], round_["stage"], round_["policy_stage"], round_["attempts"]) == (
            "queued",
            "queued",
            "dpo",
            0,
        )
        assert round_["created_by"] == "api:test-admin"
        assert reader.get(f"/v1/rounds/{round_['id']}").json()["id"] == round_["id"]
        assert [r["id"] for r in reader.get("/v1/rounds", params={"dataset": name}).json()] == [round_["id"]]
        assert reader.post("/v1/rounds", json={"dataset": name}).status_code == 403
        missing = admin.post("/v1/rounds", json={"dataset": name, "snapshot": "0123456789abcdef"})
        assert missing.status_code == 404 and missing.json()["error"] == "unknown_snapshot"
        assert admin.post("/v1/rounds", json={"dataset": name, "policy_stage": "sft"}).status_code == 422
        assert admin.post("/v1/rounds", json={"dataset": "nope"}).status_code == 404
        not_failed = admin.post(f"/v1/rounds/{round_['id']}/retry")
        assert not_failed.status_code == 409 and not_failed.json()["error"] == "not_failed"
        from alignment.service.store import make_engine

        engine = make_engine(server.db_url)
        claimed = rounds.claim(engine, "w", 30.0)
        assert claimed is not None
        assert rounds.renew(engine, claimed["id"], "w", 30.0, attempt=1, status="failed", error="boom")
        retried = admin.post(f"/v1/rounds/{claimed['id']}/retry")
        assert retried.status_code == 200
        assert (retried.json()["status"], retried.json()["error"], retried.json()["attempts"]) == (
            "queued",
            None,
            1,
        )
        engine.dispose()


def _engine_with_dataset(url: str):
    engine = open_store(url)
    with engine.begin() as connection:
        connection.execute(datasets.insert().values(name="d", created_at=0.0))
    return engine


def test_claims_are_exclusive_and_a_lapsed_lease_is_resumed_by_another_worker(
    backend: str, make_db_url
) -> None:
    engine = _engine_with_dataset(make_db_url(backend))
    round_id = rounds.create_round(engine, 1, "dpo", "test")
    winners: list[dict] = []
    barrier = threading.Barrier(6)

    def contend(index: int) -> None:
        barrier.wait()
        claimed = rounds.claim(engine, f"w{index}", lease_seconds=3.0)
        if claimed is not None:
            winners.append(claimed)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1 and winners[0]["id"] == round_id and winners[0]["attempts"] == 1
    first = winners[0]["worker"]
    assert rounds.claim(engine, "late", lease_seconds=3.0) is None  # held
    # renewed for 1 s, then the holder died
    assert rounds.renew(engine, round_id, first, 1.0, attempt=1, stage="train")
    time.sleep(1.3)
    resumed = rounds.claim(engine, "rescuer", lease_seconds=30.0)
    assert resumed is not None and resumed["worker"] == "rescuer" and resumed["attempts"] == 2
    assert resumed["stage"] == "train" and resumed["status"] == "running"
    assert not rounds.renew(engine, round_id, first, 1.0, attempt=1)  # the dead worker's renewal is refused
    engine.dispose()


def test_trigger_rule_counts_new_accepted_pairs_since_the_last_round(backend: str, make_db_url) -> None:
    from alignment.service.auth import authenticate, create_token
    from alignment.service.ingest import check_row, store_batch

    engine = _engine_with_dataset(make_db_url(backend))
    token = authenticate(engine, create_token(engine, "t", "submit")).token_id

    def submit(start: int, count: int) -> None:
        store_batch(engine, 1, "d", token, [check_row(i, pair(start + i)) for i in range(count)], None)

    submit(0, 4)
    assert rounds.maybe_trigger(engine, 1, 5, "dpo") is None
    submit(4, 1)
    first = rounds.maybe_trigger(engine, 1, 5, "dpo")
    assert first is not None and rounds.get_round(engine, first)["created_by"] == "trigger"
    submit(5, 10)
    assert rounds.maybe_trigger(engine, 1, 5, "dpo") is None  # one round at a time per dataset
    assert rounds.claim(engine, "w", 30.0)["id"] == first
    assert rounds.renew(engine, first, "w", 30.0, attempt=1, status="succeeded")
    second = rounds.maybe_trigger(engine, 1, 5, "dpo")
    assert second is not None
    assert (
        rounds.get_round(engine, second)["pair_watermark"] > rounds.get_round(engine, first)["pair_watermark"]
    )
    submit(15, 4)
    assert rounds.maybe_trigger(engine, 1, 5, "dpo") is None
    engine.dispose()


def test_the_service_triggers_a_round_after_enough_accepted_pairs(tmp_path: Path) -> None:
    server = ServerProcess(f"sqlite:///{tmp_path / 's.db'}", tmp_path, rounds={"trigger_new_pairs": 6})
    server.start()
    try:
        name = server.dataset("trig")
        with server.client("submit") as client:
            client.post(f"/v1/datasets/{name}/pairs", json={"pairs": [pair(i) for i in range(5)]})
            assert client.get("/v1/rounds").json() == []
            client.post(f"/v1/datasets/{name}/pairs", json={"pairs": [pair(i) for i in range(5, 7)]})
            (round_,) = client.get("/v1/rounds").json()
            assert round_["dataset"] == name and round_["created_by"] == "trigger"
    finally:
        server.stop()


def _config(tmp_path: Path, **rounds_settings: object) -> ServiceConfig:
    return load_service_config(
        None,
        db=f"sqlite:///{tmp_path / 's.db'}",
        rounds={
            "pipeline": str(REPO / "configs/pipelines/smoke.yaml"),
            "sft": "/models/sft",
            **rounds_settings,
        },
    )


def test_round_pipeline_reads_the_snapshot_and_warm_starts_from_the_previous_round(tmp_path: Path) -> None:
    config = _config(tmp_path, output_dir=str(tmp_path / "rounds"))
    round_ = {"id": 3, "dataset": "hh", "snapshot": "abcdef0123456789", "policy_stage": "dpo"}
    first = round_pipeline(config, round_, None)
    assert first["stages"] == ["reward", "dpo"] and "sft" not in first
    assert first["reward"]["init_from"] == first["dpo"]["init_from"] == "/models/sft"
    assert (
        first["reward"]["data"]["source"] == first["dpo"]["data"]["source"] == "service:hh@abcdef0123456789"
    )
    assert "task_count" not in first["reward"]["data"] and first["reward"]["data"]["eval_fraction"] == 0.25
    assert first["output_dir"] == str(tmp_path / "rounds" / "hh" / "round-3")
    previous = {"lineage": {"reward": {"path": "/r/2/reward"}, "policy": {"path": "/r/2/dpo"}}}
    second = round_pipeline(config, round_, previous)
    assert (second["reward"]["init_from"], second["dpo"]["init_from"]) == ("/r/2/reward", "/r/2/dpo")
    assert (
        "reference_from" not in first["dpo"] and second["dpo"]["reference_from"] == "/models/sft"
    )  # KL anchor
    ppo = round_pipeline(config, {**round_, "policy_stage": "ppo"}, previous)
    assert ppo["stages"] == ["reward", "ppo"] and ppo["ppo"]["reward_model"] == "reward"
    assert ppo["ppo"]["reference_from"] == "/models/sft"
    from alignment.config import pipeline_from_dict

    assert pipeline_from_dict(second).stage_sections["dpo"]["init_from"] == "/r/2/dpo"  # a valid config
    assert pipeline_from_dict(ppo).stage_sections["ppo"]["reference_from"] == "/models/sft"
    with pytest.raises(ValueError, match="rounds.sft"):
        round_pipeline(_config(tmp_path, sft=""), round_, None)


class RecordingSlurm:
    """Answers sbatch / squeue / sacct as a Slurm controller would, and records every command line."""

    def __init__(self, states: list[str], accounting: str = "COMPLETED|0:0") -> None:
        self.commands: list[list[str]] = []
        self.states, self.accounting = list(states), accounting

    def __call__(self, command: list[str]) -> subprocess.CompletedProcess:
        self.commands.append(command)
        out = {"sbatch": "4242;cluster\n", "sacct": self.accounting + "\n", "scancel": ""}.get(command[0], "")
        if command[0] == "squeue":
            out = (self.states.pop(0) + "\n") if self.states else ""
        return subprocess.CompletedProcess(command, 0, out, "")


def test_slurm_executor_writes_the_sbatch_script_and_follows_the_job(tmp_path: Path) -> None:
    config = _config(
        tmp_path, executor="slurm", slurm_template=str(REPO / "launch/slurm/service_round.sbatch"),
        slurm_options={"partition": "gpu", "time": "04:00:00"},
    )  # fmt: skip
    round_dir = tmp_path / "round-1"
    round_dir.mkdir()
    slurm = RecordingSlurm(["PENDING", "RUNNING"])
    secrets = {
        "WANDB_API_KEY": "wandb-secret-4f1c",
        "HF_TOKEN": "hf_secret_9a7e",
        "ALIGNMENT_SERVICE_DB": "postgresql://alignment:db-secret-77@db.internal/alignment",
        "ALIGNMENT_SERVICE_TOKEN": "token-secret-31",
    }
    env = {"ALIGNMENT_HOME": "/h", "PATH": "/x", **secrets}
    executor = SlurmExecutor(config.rounds, env, runner=slurm, poll=0)
    jobs: list[str] = []
    code = executor.run(round_dir / "round.yaml", round_dir / "round.log", None, jobs.append, lambda: True)
    assert code == 0 and jobs == ["slurm:4242"]
    script = round_dir / "round.sbatch"
    assert script.stat().st_mode & 0o777 == 0o600
    for path in round_dir.rglob("*"):  # no secret in any file the round wrote (the job inherits them)
        text = path.read_text()
        assert not [name for name, value in secrets.items() if value in text], path
    assert slurm.commands == [
        ["sbatch", "--parsable", "--export=ALL", str(script)],
        ["squeue", "--noheader", "--jobs", "4242", "--format=%T"],
        ["squeue", "--noheader", "--jobs", "4242", "--format=%T"],
        ["squeue", "--noheader", "--jobs", "4242", "--format=%T"],
        ["sacct", "--noheader", "--allocations", "--parsable2", "--jobs", "4242", "--format=State,ExitCode"],
    ]
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n#SBATCH --job-name=alignment-round-1\n")
    for line in (f"#SBATCH --output={round_dir}/slurm-%j.out", "#SBATCH --partition=gpu", "#SBATCH --time=04:00:00",
                 "export ALIGNMENT_HOME=/h", f"export ROUND_CONFIG={round_dir / 'round.yaml'}",
                 '-m alignment.cli run "$ROUND_CONFIG"'):  # fmt: skip
        assert line in text
    assert "export PATH" not in text  # only the allow-list of non-secret variables is written
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    assert "Slurm job 4242" in (round_dir / "round.log").read_text()

    # A resumed round whose job is still queued follows it instead of submitting it again; a failed one reports.
    follow = RecordingSlurm(["RUNNING", "RUNNING"], accounting="FAILED|3:0")
    executor = SlurmExecutor(config.rounds, {}, runner=follow, poll=0)
    assert (
        executor.run(round_dir / "round.yaml", round_dir / "round.log", "slurm:77", jobs.append, lambda: True)
        == 3
    )
    assert not any(command[0] == "sbatch" for command in follow.commands) and jobs[-1] == "slurm:77"
    cancelled = RecordingSlurm(["RUNNING"] * 3)
    executor = SlurmExecutor(config.rounds, {}, runner=cancelled, poll=0)
    assert (
        executor.run(round_dir / "round.yaml", round_dir / "round.log", None, jobs.append, lambda: False)
        == -9
    )
    scancel = cancelled.commands.index(["scancel", "4242"])  # then it waits until the job no longer runs
    assert [c[0] for c in cancelled.commands[scancel + 1 :]] == ["squeue", "squeue", "squeue"]


def test_slurm_executor_keeps_following_a_job_through_squeue_errors_and_accounting_lag(
    tmp_path: Path,
) -> None:
    """squeue failing (the controller did not answer) says nothing about the job, and sacct may still show a job
    RUNNING just after squeue dropped it: neither is the job's end, and neither is a failure."""
    answers = {
        "squeue": [(1, "", "squeue: error: slurm_load_jobs error: Socket timed out on send/recv operation"),
                   (0, "RUNNING\n", ""), (1, "", "slurm_load_jobs error: Invalid job id specified"),
                   (0, "", "")],
        "sacct": [(0, "RUNNING|0:0\n", ""), (0, "COMPLETED|0:0\n", "")],
    }  # fmt: skip
    commands: list[list[str]] = []

    def slurm(command: list[str]) -> subprocess.CompletedProcess:
        commands.append(command)
        code, out, err = answers[command[0]].pop(0) if command[0] in answers else (0, "4242\n", "")
        return subprocess.CompletedProcess(command, code, out, err)

    config = _config(
        tmp_path, executor="slurm", slurm_template=str(REPO / "launch/slurm/service_round.sbatch")
    )
    executor = SlurmExecutor(config.rounds, {}, runner=slurm, poll=0)
    jobs: list[str] = []
    assert executor.run(tmp_path / "round.yaml", tmp_path / "round.log", None, jobs.append, lambda: True) == 0
    assert jobs == ["slurm:4242"] and not answers["squeue"] and not answers["sacct"]


def test_a_dead_workers_local_pipeline_is_killed_before_the_round_resumes() -> None:
    leftover = subprocess.Popen(["sleep", "120"], start_new_session=True)
    codes: list[int] = []
    reaper = threading.Thread(
        target=lambda: codes.append(leftover.wait())
    )  # as init reaps a dead worker's orphan
    reaper.start()
    try:
        started = time.time()
        _kill_leftover(f"local:{socket.gethostname()}:{leftover.pid}")
        reaper.join(timeout=10)
        assert codes == [-9] and time.time() - started < 5
    finally:
        if leftover.poll() is None:
            os.kill(leftover.pid, 9)
    _kill_leftover("local:another-host:1")  # not ours to kill: nothing happens
