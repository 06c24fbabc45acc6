"""`alignment worker`: claim queued rounds from the store and run them, one at a time.

A round: (1) snapshot the dataset (or use the snapshot the request named), recorded in the round before anything
trains; (2) write `<rounds.output_dir>/<dataset>/round-<id>/round.yaml` from the base pipeline with both stages
reading `service:<dataset>@<version>`: the reward model warm-starts from the previous succeeded round's RM (the
SFT artifact in round 1), the policy stage (DPO or PPO) from the previous round's policy (SFT in round 1);
(3) run it through the executor; (4) read the metrics (RM held-out accuracy, the policy's held-out figures, gold
score when the base pipeline has an `evaluation:` section) and record the lineage snapshot -> RM -> policy ->
eval in the round. The stages log the same lineage to W&B, grouped as `service-<dataset>-round-<id>`.

The lease is renewed in a background thread and every write to the round is fenced by the claim (worker, attempt).
When the round is lost (the store says another claim holds it, or no renewal succeeded until the lease would have
expired), the round's pipeline is stopped (process group killed, Slurm job cancelled) and this worker moves on
without writing anything more. While it runs a round the worker holds an exclusive lock on the round's output
directory (`round_lock`), so a second worker waits for the first (or for the pipeline it left) to stop.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from alignment import artifacts
from alignment.config import read_yaml
from alignment.service import rounds, snapshots
from alignment.service.executors import make_executor
from alignment.service.settings import ServiceConfig
from alignment.service.store import open_store


def round_pipeline(
    config: ServiceConfig, round_: dict[str, Any], previous: dict[str, Any] | None
) -> dict[str, Any]:
    """The round's pipeline config (a dict, written as round.yaml), from the base pipeline of `rounds.pipeline`."""
    settings = config.rounds
    if not settings.sft:
        raise ValueError(
            "rounds.sft is not set: name the SFT artifact that round 1 starts from (the KL reference)"
        )
    base = read_yaml(settings.pipeline)
    stage = round_["policy_stage"]
    for needed in ("reward", stage):
        if needed not in base:
            raise ValueError(f"{settings.pipeline} has no `{needed}:` section for the round to reuse")
    output = Path(settings.output_dir) / round_["dataset"] / f"round-{round_['id']}"
    source = f"service:{round_['dataset']}@{round_['snapshot']}"
    previous_lineage = (previous or {}).get("lineage") or {}
    reward_init = previous_lineage.get("reward", {}).get("path") or settings.sft
    policy_init = previous_lineage.get("policy", {}).get("path") or settings.sft
    pipeline = {
        key: value
        for key, value in base.items()
        if key not in ("sft", "reward", "dpo", "ppo", "grpo", "rloo")
    }
    pipeline.update(
        name=f"{round_['dataset']}-round-{round_['id']}", output_dir=str(output), stages=["reward", stage]
    )
    reward = dict(base["reward"], init_from=str(reward_init))
    reward["data"] = {**dict(base["reward"].get("data") or {}), "source": source, "format": "auto"}
    policy = dict(base[stage], init_from=str(policy_init))
    policy["data"] = {**dict(base[stage].get("data") or {}), "source": source, "format": "auto"}
    for section in (reward, policy):
        section["data"] = {
            k: v for k, v in section["data"].items() if k not in ("task_count", "task_families")
        }
    if stage in ("dpo", "ppo") and str(policy_init) != str(settings.sft):
        policy["reference_from"] = str(settings.sft)  # every round is KL-anchored to the SFT policy
    if stage == "ppo":
        policy["reward_model"] = "reward"  # this round's RM
    pipeline["reward"], pipeline[stage] = reward, policy
    if isinstance(pipeline.get("evaluation"), dict):
        pipeline["evaluation"] = {**pipeline["evaluation"], "policies": [stage]}
    return pipeline


def collect_results(
    output: Path, round_: dict[str, Any], reward_init: str, policy_init: str
) -> tuple[dict, dict]:
    """(metrics, lineage) of a finished round from its artifacts' manifests and summary.json."""
    stage = round_["policy_stage"]
    summary_path = output / "summary.json"
    metrics = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    lineage: dict[str, Any] = {
        "snapshot": {
            "version": round_["snapshot"],
            "source": f"service:{round_['dataset']}@{round_['snapshot']}",
        }
    }
    for name, stage_name, init in (("reward", "reward", reward_init), ("policy", stage, policy_init)):
        path = output / stage_name
        manifest = artifacts.read_manifest(path)
        lineage[name] = {
            "path": str(path.resolve()),
            "stage": stage_name,
            "manifest_hash": artifacts.manifest_hash(path),
            "init_from": init,
            "data": manifest.get("data"),
            "wandb_run": manifest.get("wandb_run_id"),
        }
    lineage["eval"] = {
        "path": str(summary_path.resolve()) if summary_path.is_file() else None,
        "metrics": metrics,
    }
    return metrics, lineage


class LostRound(RuntimeError):
    """This worker no longer holds the round: it stops its work and writes nothing more."""


class Lease:
    """This worker's claim (worker, attempt) on a round, renewed every lease/3 s in a thread.

    Every write to the round goes through `update`, fenced by the claim (`rounds.renew` applies only while the row
    still holds it). The round is lost, and `alive()` False from then on, when the store says another claim holds
    it, or when no renewal succeeded until the lease would have expired (store errors: by then another worker may
    claim the round). `alive()` checks that expiry itself, so a renewal hanging on an unreachable store cannot
    keep it True."""

    def __init__(
        self,
        engine: Engine,
        round_id: int,
        worker: str,
        attempt: int,
        seconds: float,
        expires_at: float | None = None,
    ) -> None:
        self.engine, self.round_id, self.worker, self.attempt, self.seconds = (
            engine, round_id, worker, attempt, seconds,
        )  # fmt: skip
        self.expires_at = expires_at if expires_at is not None else time.time() + seconds
        self.reason = ""
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._guard = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _lose(self, reason: str) -> None:
        with self._guard:
            if not self._lost.is_set():
                self.reason = reason
                self._lost.set()

    def _renew(self, **fields: Any) -> bool:
        started = time.time()  # the store's new expiry is at least started + seconds
        held = rounds.renew(
            self.engine, self.round_id, self.worker, self.seconds, attempt=self.attempt, **fields
        )
        if not held:
            self._lose(f"the store holds another claim than ({self.worker}, attempt {self.attempt})")
            return False
        with self._guard:
            self.expires_at = max(self.expires_at, started + self.seconds)
        return True

    def _loop(self) -> None:
        wait = self.seconds / 3
        while not self._stop.wait(wait) and self.alive():
            try:
                if not self._renew():
                    return
                wait = self.seconds / 3
            except SQLAlchemyError:  # the store unreachable: retried until the lease would have expired
                wait = min(self.seconds / 3, 1.0)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.seconds)  # a renewal hanging on an unreachable store is left behind

    def alive(self) -> bool:
        if not self._lost.is_set() and time.time() >= self.expires_at:
            self._lose("no renewal succeeded before the lease expired (the store did not answer)")
        return not self._lost.is_set()

    def update(self, **fields: Any) -> None:
        """Set `fields` in the round (and renew the lease), fenced by this claim; store errors are retried until
        the lease would have expired. Raises LostRound when the round is no longer this worker's."""
        while self.alive():
            try:
                if self._renew(**fields):
                    return
            except SQLAlchemyError:
                time.sleep(min(1.0, self.seconds / 10))
        raise LostRound(f"round {self.round_id} is no longer held by this worker: {self.reason}")


@contextmanager
def round_lock(output: Path, alive: Callable[[], bool], holder: str, poll: float = 0.5) -> Iterator[int]:
    """Hold an exclusive lock on `<output>/.lock` (fcntl.flock) for the whole execution; yields its descriptor.

    While another holder has it (a worker still running this round, or the pipeline a dead worker left, which
    inherits the lock), wait as long as `alive()`, and raise LostRound when that turns False first. flock keeps
    apart the processes of one host and, on NFS (v4, or v3 with lockd), of all hosts: Linux turns it into a
    whole-file NFS lock. Where the shared file system's locks are local to each host (e.g. Lustre mounted with
    `localflock`, some FUSE file systems) it does not reach across hosts, and only the fenced lease (and the
    pipeline's kill when it is lost) keeps two workers apart; where it has no locks at all (Lustre's `noflock`)
    the round fails with this error rather than running unlocked."""
    output.mkdir(parents=True, exist_ok=True)
    path = output / ".lock"
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        waited = False
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not alive():
                    raise LostRound(f"lost the round while waiting for {path}") from None
                if not waited:
                    print(f"waiting for {path}: another worker, or a pipeline one left, runs this round")
                    sys.stdout.flush()
                    waited = True
                time.sleep(poll)
            except OSError as error:
                raise OSError(
                    f"cannot lock {path} ({error}): put rounds.output_dir on a file system with locks "
                    "(e.g. Lustre mounted with -o flock)"
                ) from error
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{holder} pid {os.getpid()}\n".encode())
        yield descriptor
    finally:
        os.close(descriptor)


def execute_round(engine: Engine, config: ServiceConfig, round_: dict[str, Any], worker: str) -> str:
    """Run one claimed round to the end; returns its final status, or `lost` when another worker took it over
    (then this worker has stopped the round's pipeline and written nothing since it lost the round)."""
    settings = config.rounds
    lease = Lease(
        engine,
        round_["id"],
        worker,
        round_["attempts"],
        settings.lease_seconds,
        round_.get("lease_expires_at"),
    )
    with lease:
        try:
            if not round_["snapshot"]:
                lease.update(stage="snapshot")
                record, _ = snapshots.create_snapshot(
                    engine, config.snapshot_dir, round_["dataset_id"], round_["dataset"], None,
                    config.tracking, config.wandb_project,
                )  # fmt: skip
                round_["snapshot"] = record["version"]
                lease.update(snapshot_version=record["version"])
            previous = rounds.previous_round(engine, round_["dataset_id"], round_["id"])
            pipeline = round_pipeline(config, round_, previous)
            output = Path(pipeline["output_dir"])
            env = {
                **os.environ,
                "ALIGNMENT_SERVICE_SNAPSHOTS": str(Path(config.snapshot_dir).resolve()),
                "ALIGNMENT_RUN_ID": f"service-{round_['dataset']}-round-{round_['id']}",
                "ALIGNMENT_PYTHON": sys.executable,
                "ALIGNMENT_REPO": os.getcwd(),
                "PYTHONUNBUFFERED": "1",
            }
            executor = make_executor(settings, env)
            executor.stop_leftover(round_["executor_job"])
            with round_lock(output, lease.alive, f"{worker} attempt {round_['attempts']}") as lock:
                if not lease.alive():
                    raise LostRound(lease.reason)
                round_yaml = output / "round.yaml"
                round_yaml.write_text(yaml.safe_dump(pipeline, sort_keys=False))
                log_path = output / "round.log"
                lease.update(
                    stage="train", output_dir=str(output.resolve()), logs_path=str(log_path.resolve())
                )
                code = executor.run(
                    round_yaml,
                    log_path,
                    round_["executor_job"],
                    lambda job: lease.update(executor_job=job),
                    lease.alive,
                    keep_fds=(lock,),
                )
                if not lease.alive():
                    raise LostRound(lease.reason)
                if code != 0:
                    tail = (
                        log_path.read_text(errors="replace").splitlines()[-20:] if log_path.is_file() else []
                    )
                    lease.update(
                        status="failed", error=f"pipeline exited {code}; log {log_path}:\n" + "\n".join(tail)
                    )
                    return "failed"
                lease.update(stage="evaluate")
                metrics, lineage = collect_results(
                    output,
                    round_,
                    pipeline["reward"]["init_from"],
                    pipeline[round_["policy_stage"]]["init_from"],
                )
                lease.update(status="succeeded", stage="done", metrics_json=metrics, lineage_json=lineage)
                return "succeeded"
        except LostRound:
            print(f"round {round_['id']}: lost ({lease.reason}); its work was stopped, nothing more written")
            sys.stdout.flush()
            return "lost"
        except Exception as error:  # noqa: BLE001 - recorded in the round, the worker goes on
            message = f"{type(error).__name__}: {error}\n{traceback.format_exc()[-3000:]}"
            try:
                lease.update(status="failed", error=message)
            except LostRound:
                return "lost"
            return "failed"


def run_worker(config: ServiceConfig, once: bool = False, poll_seconds: float = 5.0) -> int:
    """Claim and run rounds until interrupted (or one round with `once`)."""
    engine = open_store(config.db)
    worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    print(
        f"alignment worker {worker}: executor {config.rounds.executor}, rounds under {config.rounds.output_dir}"
    )
    sys.stdout.flush()
    while True:
        claimed = rounds.claim(engine, worker, config.rounds.lease_seconds, config.rounds.max_attempts)
        if claimed is None:
            if once:
                print("no round to run")
                return 0
            time.sleep(poll_seconds)
            continue
        print(f"round {claimed['id']} ({claimed['dataset']}, attempt {claimed['attempts']}): running")
        sys.stdout.flush()
        status = execute_round(engine, config, claimed, worker)
        print(f"round {claimed['id']}: {status}")
        sys.stdout.flush()
        if once:
            return 0 if status == "succeeded" else 1
