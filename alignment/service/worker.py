"""`alignment worker`: claim queued rounds from the store and run them, one at a time.

A round: (1) snapshot the dataset (or use the snapshot the request named), recorded in the round before anything
trains; (2) write `<rounds.output_dir>/<dataset>/round-<id>/round.yaml` from the base pipeline with both stages
reading `service:<dataset>@<version>`: the reward model warm-starts from the previous succeeded round's RM (the
SFT artifact in round 1), the policy stage (DPO or PPO) from the previous round's policy (SFT in round 1);
(3) run it through the executor; (4) read the metrics (RM held-out accuracy, the policy's held-out figures, gold
score when the base pipeline has an `evaluation:` section) and record the lineage snapshot -> RM -> policy ->
eval in the round. The stages log the same lineage to W&B, grouped as `service-<dataset>-round-<id>`.

The lease is renewed in a background thread; if it is lost (the store says another worker has the round), the
pipeline is stopped and this worker moves on.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy.engine import Engine

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


class Lease:
    """Renews a round's lease every lease/3 s in a thread; `alive()` turns False once the round is lost."""

    def __init__(self, engine: Engine, round_id: int, worker: str, seconds: float) -> None:
        self.engine, self.round_id, self.worker, self.seconds = engine, round_id, worker, seconds
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                if not rounds.renew(self.engine, self.round_id, self.worker, self.seconds):
                    self._lost.set()
                    return
            except Exception:  # noqa: BLE001 - a store hiccup: keep trying until the lease runs out
                continue

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def alive(self) -> bool:
        return not self._lost.is_set()

    def update(self, **fields: Any) -> None:
        if not rounds.renew(self.engine, self.round_id, self.worker, self.seconds, **fields):
            self._lost.set()
            raise RuntimeError(f"round {self.round_id} is no longer held by this worker")


def execute_round(engine: Engine, config: ServiceConfig, round_: dict[str, Any], worker: str) -> str:
    """Run one claimed round to the end; returns its final status."""
    settings = config.rounds
    with Lease(engine, round_["id"], worker, settings.lease_seconds) as lease:
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
            output.mkdir(parents=True, exist_ok=True)
            round_yaml = output / "round.yaml"
            round_yaml.write_text(yaml.safe_dump(pipeline, sort_keys=False))
            log_path = output / "round.log"
            lease.update(stage="train", output_dir=str(output.resolve()), logs_path=str(log_path.resolve()))
            env = {
                **os.environ,
                "ALIGNMENT_SERVICE_SNAPSHOTS": str(Path(config.snapshot_dir).resolve()),
                "ALIGNMENT_RUN_ID": f"service-{round_['dataset']}-round-{round_['id']}",
                "ALIGNMENT_PYTHON": sys.executable,
                "ALIGNMENT_REPO": os.getcwd(),
                "PYTHONUNBUFFERED": "1",
            }
            executor = make_executor(settings, env)
            code = executor.run(
                round_yaml,
                log_path,
                round_["executor_job"],
                lambda job: lease.update(executor_job=job),
                lease.alive,
            )
            if not lease.alive():
                return "lost"
            if code != 0:
                tail = log_path.read_text(errors="replace").splitlines()[-20:] if log_path.is_file() else []
                lease.update(
                    status="failed", error=f"pipeline exited {code}; log {log_path}:\n" + "\n".join(tail)
                )
                return "failed"
            lease.update(stage="evaluate")
            metrics, lineage = collect_results(
                output, round_, pipeline["reward"]["init_from"], pipeline[round_["policy_stage"]]["init_from"]
            )
            lease.update(status="succeeded", stage="done", metrics_json=metrics, lineage_json=lineage)
            return "succeeded"
        except Exception as error:  # noqa: BLE001 - recorded in the round, the worker goes on
            if lease.alive():
                message = f"{type(error).__name__}: {error}\n{traceback.format_exc()[-3000:]}"
                rounds.renew(
                    engine, round_["id"], worker, settings.lease_seconds, status="failed", error=message
                )
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
        claimed = rounds.claim(engine, worker, config.rounds.lease_seconds)
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
