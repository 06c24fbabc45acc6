"""A round never runs twice: every write is fenced by the claim (worker, attempt), a worker that cannot renew its
lease until it would expire (or is fenced out) kills the round's pipeline and writes nothing more, the round's
output directory is locked while a worker (or the pipeline it left) runs it, and a round is claimed at most
`rounds.max_attempts` times.

The worker-level tests run `execute_round` in threads over a real store, with a stand-in pipeline (a Python
process that appends a timestamp to `ticks-<pid>` in the round's directory every 0.1 s) and, for the two-worker
race, a host name per thread, so that the workers behave as on two machines sharing the output directory."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from alignment.config import ConfigError
from alignment.service import executors, rounds, worker
from alignment.service.executors import LocalExecutor
from alignment.service.settings import ServiceConfig, load_service_config
from alignment.service.store import datasets, open_store
from alignment.service.store import rounds as rounds_table
from tests.helpers import REPO

SNAPSHOT = "0123456789abcdef"
FAKE_PIPELINE = """
import os, sys, time
from pathlib import Path
ticks = Path(sys.argv[1]).parent / f"ticks-{os.getpid()}"
for _ in range(int(sys.argv[2])):
    with open(ticks, "a") as handle:
        handle.write(f"{time.time()}\\n")
    time.sleep(0.1)
"""


def _store(url: str) -> Any:
    engine = open_store(url)
    with engine.begin() as connection:
        connection.execute(datasets.insert().values(name="d", created_at=0.0))
    return engine


def _config(tmp_path: Path, lease_seconds: float = 2.0, **settings: Any) -> ServiceConfig:
    return load_service_config(
        None,
        db=f"sqlite:///{tmp_path / 's.db'}",
        snapshot_dir=str(tmp_path / "snapshots"),
        rounds={
            "pipeline": str(REPO / "configs/pipelines/smoke.yaml"),
            "sft": "/models/sft",
            "output_dir": str(tmp_path / "rounds"),
            "lease_seconds": lease_seconds,
            **settings,
        },
    )


@pytest.fixture
def fake_pipeline(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """The stand-in pipeline (ticks `ticks[\"count\"]` times) and results read without real artifacts."""
    ticks = {"count": 30}
    monkeypatch.setattr(
        executors,
        "pipeline_command",
        lambda round_yaml: [sys.executable, "-c", FAKE_PIPELINE, str(round_yaml), str(ticks["count"])],
    )
    monkeypatch.setattr(worker, "collect_results", lambda *args: ({"rm_heldout_accuracy": 0.5}, {}))
    return ticks


def _ticks(output: Path) -> dict[int, list[float]]:
    """pid -> the times its pipeline process ticked in the round's directory."""
    return {
        int(path.name.split("-")[1]): [float(line) for line in path.read_text().split()]
        for path in output.glob("ticks-*")
    }


def _wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# ------------------------------------------------------------------------------------------------ the store
def test_every_write_is_fenced_by_the_claims_worker_and_attempt(backend: str, make_db_url) -> None:
    engine = _store(make_db_url(backend))
    round_id = rounds.create_round(engine, 1, "dpo", "test")
    first = rounds.claim(engine, "w", lease_seconds=30.0)
    assert first["attempts"] == 1
    assert rounds.renew(engine, round_id, "w", 30.0, attempt=1, stage="train")
    assert not rounds.renew(engine, round_id, "other", 30.0, attempt=1, stage="evaluate")
    assert rounds.renew(engine, round_id, "w", -1.0, attempt=1)  # its lease lapses ...
    second = rounds.claim(
        engine, "w", lease_seconds=30.0
    )  # ... and the same worker id claims the round again
    assert second["attempts"] == 2
    # The first claim's writes no longer apply, though the worker id matches: attempt 1 is fenced out.
    assert not rounds.renew(engine, round_id, "w", 30.0, attempt=1, status="succeeded", stage="done")
    assert not rounds.renew(engine, round_id, "w", 30.0, attempt=1)
    after = rounds.get_round(engine, round_id)
    assert (after["status"], after["stage"], after["attempts"]) == ("running", "train", 2)
    assert after["lease_expires_at"] == second["lease_expires_at"]
    assert rounds.renew(engine, round_id, "w", 30.0, attempt=2, status="succeeded", stage="done")
    assert not rounds.renew(engine, round_id, "w", 30.0, attempt=2, error="late")  # finished: no more writes
    engine.dispose()


def test_a_round_whose_last_allowed_attempt_lapsed_is_failed_not_claimed_again(
    backend: str, make_db_url
) -> None:
    engine = _store(make_db_url(backend))
    round_id = rounds.create_round(engine, 1, "dpo", "test")
    for attempt in (1, 2):  # each claimer dies at once: its lease has already lapsed
        claimed = rounds.claim(engine, f"w{attempt}", lease_seconds=-1.0, max_attempts=2)
        assert claimed is not None and claimed["attempts"] == attempt
    assert rounds.claim(engine, "w3", lease_seconds=30.0, max_attempts=2) is None
    failed = rounds.get_round(engine, round_id)
    assert (failed["status"], failed["attempts"], failed["worker"]) == ("failed", 2, "w2")
    assert "rounds.max_attempts is 2" in failed["error"] and "attempt 2" in failed["error"]
    assert not rounds.renew(engine, round_id, "w2", 30.0, attempt=2)  # the last claimer cannot revive it
    # A round within its cap is claimed again as before.
    other = rounds.create_round(engine, 1, "dpo", "test")
    rounds.claim(engine, "w1", lease_seconds=-1.0, max_attempts=2)
    assert rounds.claim(engine, "w2", lease_seconds=30.0, max_attempts=2)["id"] == other
    engine.dispose()


def test_max_attempts_is_a_rounds_setting_of_at_least_one() -> None:
    assert ServiceConfig(db="sqlite://").rounds.max_attempts == 3
    assert load_service_config(None, db="sqlite://", rounds={"max_attempts": 5}).rounds.max_attempts == 5
    with pytest.raises(ConfigError, match="max_attempts"):
        load_service_config(None, db="sqlite://", rounds={"max_attempts": 0})


# ------------------------------------------------------------------------------------------------ the worker
def test_two_workers_race_for_a_round_the_one_that_lost_stops_and_writes_nothing(
    tmp_path: Path, fake_pipeline: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Worker A runs the round, then loses the store (a network partition) while its pipeline runs; its lease
    lapses and worker B, on another host, claims the round. A must kill its pipeline and write nothing once it
    lost; B must not start its pipeline while A's runs; when the store comes back, A's writes are refused."""
    config = _config(tmp_path, lease_seconds=1.5)
    engine = _store(config.db)
    round_id = rounds.create_round(engine, 1, "dpo", "test", snapshot_version=SNAPSHOT)
    fake_pipeline["count"] = 200  # A's pipeline would work for 20 s
    monkeypatch.setattr(socket, "gethostname", lambda: threading.current_thread().name)  # one host per thread

    partition = threading.Event()
    writes: list[tuple[str, dict, bool, float]] = []  # (worker, fields, applied, time)
    real_renew = rounds.renew

    def renew(engine_: Any, round_id_: int, worker_: str, *args: Any, **kwargs: Any) -> bool:
        if worker_ == "A" and partition.is_set():
            raise OperationalError("UPDATE rounds", {}, ConnectionError("the store is unreachable from A"))
        applied = real_renew(engine_, round_id_, worker_, *args, **kwargs)
        writes.append((worker_, kwargs, applied, time.time()))
        return applied

    monkeypatch.setattr(rounds, "renew", renew)
    results: dict[str, str] = {}
    returned: dict[str, float] = {}

    def run(name: str) -> None:
        claimed = None
        while claimed is None:  # B waits for A's lease to lapse
            claimed = rounds.claim(engine, name, config.rounds.lease_seconds)
            time.sleep(0.05)
        results[name] = worker.execute_round(engine, config, claimed, name)
        returned[name] = time.time()

    host_a = threading.Thread(target=run, args=("A",), name="host-a")
    host_a.start()
    started = _wait_for(
        lambda: (r := rounds.get_round(engine, round_id))["executor_job"] and r, 30, "A's job"
    )
    output = Path(started["output_dir"])
    a_pid = int(started["executor_job"].split(":")[-1])
    assert started["executor_job"].startswith("local:host-a:")
    _wait_for(lambda: a_pid in _ticks(output), 10, "A's pipeline to work")
    fake_pipeline["count"] = 20  # B's for 2 s
    partitioned_at = time.time()
    partition.set()  # A can no longer reach the store
    host_b = threading.Thread(target=run, args=("B",), name="host-b")
    host_b.start()
    claimed_by_b = _wait_for(
        lambda: (r := rounds.get_round(engine, round_id))["worker"] == "B" and r, 30, "B's claim"
    )
    time.sleep(0.5)
    partition.clear()  # the store is back for A: anything it still tries must be refused
    host_a.join(timeout=60)
    host_b.join(timeout=60)
    assert results == {"A": "lost", "B": "succeeded"}

    done = rounds.get_round(engine, round_id)
    assert (done["status"], done["stage"], done["worker"], done["attempts"]) == ("succeeded", "done", "B", 2)
    assert claimed_by_b["attempts"] == 2
    assert not [w for w in writes if w[0] == "A" and w[2] and w[3] >= partitioned_at]  # none of A's applied
    assert not [w for w in writes if w[0] == "A" and w[3] >= returned["A"]]  # none tried once it gave up
    assert not [w for w in writes if w[0] == "A" and "status" in w[1]]  # A never tried to end the round

    ticks = _ticks(output)
    assert set(ticks) - {a_pid}, "B's pipeline never ran"
    (b_pid,) = set(ticks) - {a_pid}
    assert _gone(a_pid) and len(ticks[a_pid]) < 100  # killed long before its 20 s were up
    assert max(ticks[a_pid]) < min(ticks[b_pid])  # never two pipelines in the round's directory at once
    assert max(ticks[a_pid]) <= returned["A"]  # nothing of A's written after it gave the round up
    assert len(ticks[b_pid]) == 20
    assert (output / ".lock").read_text().startswith("B attempt 2 ")
    starts = [line for line in (output / "round.log").read_text().splitlines() if line.startswith("$ ")]
    assert len(starts) == 2  # A's pipeline, then B's
    engine.dispose()


def test_a_worker_whose_lease_was_taken_over_kills_its_pipeline_and_writes_nothing(
    tmp_path: Path, fake_pipeline: dict[str, int]
) -> None:
    fake_pipeline["count"] = 300
    config = _config(tmp_path, lease_seconds=1.5)
    engine = _store(config.db)
    round_id = rounds.create_round(engine, 1, "dpo", "test", snapshot_version=SNAPSHOT)
    claimed = rounds.claim(engine, "A", config.rounds.lease_seconds)
    result: list[str] = []
    thread = threading.Thread(
        target=lambda: result.append(worker.execute_round(engine, config, claimed, "A"))
    )
    thread.start()
    started = _wait_for(
        lambda: (r := rounds.get_round(engine, round_id))["executor_job"] and r, 30, "A's job"
    )
    output = Path(started["output_dir"])
    a_pid = int(started["executor_job"].split(":")[-1])
    _wait_for(lambda: a_pid in _ticks(output), 10, "A's pipeline to work")
    with engine.begin() as connection:  # A's lease expires ...
        connection.execute(
            update(rounds_table).where(rounds_table.c.id == round_id).values(lease_expires_at=time.time() - 1)
        )
    taken = rounds.claim(engine, "B", lease_seconds=60.0)  # ... and B takes the round over
    assert taken is not None and taken["attempts"] == 2
    thread.join(timeout=30)
    assert result == ["lost"]
    returned = time.time()
    assert _gone(a_pid)
    assert rounds.get_round(engine, round_id) == taken  # not one field written by A after the takeover
    last_tick = max(_ticks(output)[a_pid])
    time.sleep(0.5)
    assert max(_ticks(output)[a_pid]) == last_tick <= returned
    engine.dispose()


def test_a_second_worker_waits_for_the_round_directorys_lock_before_writing_there(
    tmp_path: Path, fake_pipeline: dict[str, int]
) -> None:
    """The first holder here is another process (another worker, or the pipeline a dead one left on another
    host): while it holds `<round dir>/.lock`, the worker that claimed the round writes nothing there."""
    fake_pipeline["count"] = 5
    config = _config(tmp_path, lease_seconds=1.5)
    engine = _store(config.db)
    round_id = rounds.create_round(engine, 1, "dpo", "test", snapshot_version=SNAPSHOT)
    output = tmp_path / "rounds" / "d" / f"round-{round_id}"
    output.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(120)", str(output / ".lock")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        claimed = rounds.claim(engine, "B", config.rounds.lease_seconds)
        result: list[str] = []
        thread = threading.Thread(
            target=lambda: result.append(worker.execute_round(engine, config, claimed, "B"))
        )
        thread.start()
        time.sleep(3.5)  # two lease lengths: B keeps its lease while it waits, and writes nothing
        assert thread.is_alive() and sorted(p.name for p in output.iterdir()) == [".lock"]
        waiting = rounds.get_round(engine, round_id)
        assert (waiting["status"], waiting["worker"], waiting["stage"]) == ("running", "B", "queued")
        assert waiting["lease_expires_at"] > time.time()
    finally:
        holder.kill()
        holder.wait()
    thread.join(timeout=30)
    assert result == ["succeeded"] and rounds.get_round(engine, round_id)["status"] == "succeeded"
    assert (output / "round.yaml").is_file() and len(_ticks(output)) == 1
    engine.dispose()


def test_the_local_pipeline_keeps_the_lock_and_is_killed_when_the_lease_is_lost(
    tmp_path: Path, fake_pipeline: dict[str, int]
) -> None:
    fake_pipeline["count"] = 300
    round_yaml = tmp_path / "round.yaml"
    lock = os.open(tmp_path / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)
    alive = threading.Event()
    alive.set()
    jobs: list[str] = []
    codes: list[int] = []
    run = threading.Thread(
        target=lambda: codes.append(
            LocalExecutor({**os.environ}).run(
                round_yaml, tmp_path / "round.log", None, jobs.append, alive.is_set, keep_fds=(lock,)
            )
        )
    )
    run.start()
    _wait_for(lambda: jobs, 10, "the job")
    pid = int(jobs[0].split(":")[-1])
    _wait_for(lambda: pid in _ticks(tmp_path), 10, "the pipeline to work")
    os.close(lock)  # the worker's own descriptor is gone (as when it dies) ...
    other = os.open(tmp_path / ".lock", os.O_RDWR)
    with pytest.raises(BlockingIOError):  # ... and the running pipeline still holds the lock
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    alive.clear()  # the lease is lost
    run.join(timeout=15)
    assert codes == [-9] and _gone(pid)
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free once the pipeline is dead
    os.close(other)
