"""Alignment rounds as jobs in the store: creation (API or trigger rule), leases and status (routes: app.py).

A round moves queued -> running -> succeeded | failed, through stages snapshot -> train -> evaluate -> done.
A worker claims a round with a compare-and-swap on its `attempts` counter and holds it with a lease that it
renews; when a worker dies the lease lapses and another worker claims the round again, up to
`rounds.max_attempts` claims. The (worker, attempts) pair of a claim fences every write: a worker that lost its
claim can no longer change the round. Every step of a round is idempotent (the snapshot is recorded before
training; the pipeline skips complete stages and resumes from checkpoints in the same output directory), so a
resumed round continues; the worker (worker.py) holds a lock on the output directory while it runs the round, so
two workers never run it in the same directory at once.
"""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.engine import Engine

from alignment.service.store import datasets, pairs, rounds, writing

ACTIVE = ("queued", "running")


def create_round(
    engine: Engine, dataset_id: int, policy_stage: str, created_by: str, snapshot_version: str | None = None
) -> int:
    now = time.time()
    with writing(engine) as connection:
        watermark = connection.execute(
            select(func.coalesce(func.max(pairs.c.id), 0)).where(pairs.c.dataset_id == dataset_id)
        ).scalar_one()
        return connection.execute(
            insert(rounds)
            .values(
                dataset_id=dataset_id,
                status="queued",
                stage="queued",
                policy_stage=policy_stage,
                snapshot_version=snapshot_version,
                pair_watermark=watermark,
                attempts=0,
                created_by=created_by,
                created_at=now,
                updated_at=now,
            )
            .returning(rounds.c.id)
        ).scalar_one()


def maybe_trigger(engine: Engine, dataset_id: int, threshold: int, policy_stage: str) -> int | None:
    """The trigger rule: a new round once >= `threshold` accepted pairs arrived since the last round's creation,
    unless a round of this dataset is still queued or running. Returns the new round's id, or None."""
    if threshold <= 0:
        return None
    with writing(engine) as connection:
        if engine.dialect.name == "postgresql":  # one trigger decision per dataset at a time
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": 7_000_000 + dataset_id})
        active = connection.execute(
            select(func.count()).where(rounds.c.dataset_id == dataset_id, rounds.c.status.in_(ACTIVE))
        ).scalar_one()
        if active:
            return None
        watermark = connection.execute(
            select(func.coalesce(func.max(rounds.c.pair_watermark), 0)).where(
                rounds.c.dataset_id == dataset_id
            )
        ).scalar_one()
        new_ids = connection.execute(
            select(func.count(), func.max(pairs.c.id)).where(
                pairs.c.dataset_id == dataset_id, pairs.c.id > watermark, pairs.c.retracted_at.is_(None)
            )
        ).one()
        if new_ids[0] < threshold:
            return None
        now = time.time()
        return connection.execute(
            insert(rounds)
            .values(
                dataset_id=dataset_id,
                status="queued",
                stage="queued",
                policy_stage=policy_stage,
                pair_watermark=new_ids[1],
                attempts=0,
                created_by="trigger",
                created_at=now,
                updated_at=now,
            )
            .returning(rounds.c.id)
        ).scalar_one()


def claim(engine: Engine, worker: str, lease_seconds: float, max_attempts: int = 3) -> dict[str, Any] | None:
    """Claim the oldest queued round, or a running one whose lease lapsed (its worker died or lost the store).

    The claim is a compare-and-set on `attempts` (and, for a running round, on its lease still being lapsed), so
    one claimer wins; the returned round's `attempts` is the winner's fencing token for every later write
    (`renew`). A lapsed round that already had `max_attempts` claims is marked failed instead of claimed again."""
    now = time.time()
    lapsed = (rounds.c.status == "running") & (rounds.c.lease_expires_at < now)
    with engine.connect() as connection:
        candidates = connection.execute(
            select(rounds.c.id, rounds.c.attempts, rounds.c.status, rounds.c.worker)
            .where((rounds.c.status == "queued") | lapsed)
            .order_by(rounds.c.id)
            .limit(8)
        ).all()
    for round_id, attempts, status, last_worker in candidates:
        same = (rounds.c.id == round_id) & (rounds.c.attempts == attempts)
        same = same & ((rounds.c.status == "queued") if status == "queued" else lapsed)
        if status == "running" and attempts >= max_attempts:
            error = (
                f"the lease of attempt {attempts} lapsed (worker {last_worker} stopped renewing it) and "
                f"rounds.max_attempts is {max_attempts}: not claimed again; POST /v1/rounds/{round_id}/retry "
                "gives it one more attempt"
            )
            with writing(engine) as connection:
                connection.execute(
                    update(rounds).where(same).values(status="failed", error=error, updated_at=time.time())
                )
            continue
        with writing(engine) as connection:
            won = connection.execute(
                update(rounds)
                .where(same)
                .values(
                    status="running",
                    worker=worker,
                    lease_expires_at=time.time() + lease_seconds,
                    attempts=attempts + 1,
                    updated_at=time.time(),
                )
            ).rowcount
        if won == 1:
            return get_round(engine, round_id)
    return None


def renew(
    engine: Engine, round_id: int, worker: str, lease_seconds: float, *, attempt: int, **fields: Any
) -> bool:
    """Extend the lease of the claim (`worker`, `attempt`) and set `fields` in the same UPDATE: every write a
    worker makes to its round (stage, job handle, results, final status). It applies only while the row still
    holds that claim (a compare-and-set on worker, attempts and status running); returns whether it applied."""
    values = {"lease_expires_at": time.time() + lease_seconds, "updated_at": time.time(), **fields}
    for key in ("metrics_json", "lineage_json"):
        if key in values and not isinstance(values[key], str):
            values[key] = json.dumps(values[key])
    with writing(engine) as connection:
        return (
            connection.execute(
                update(rounds)
                .where(
                    rounds.c.id == round_id,
                    rounds.c.worker == worker,
                    rounds.c.attempts == attempt,
                    rounds.c.status == "running",
                )
                .values(**values)
            ).rowcount
            == 1
        )


def get_round(engine: Engine, round_id: int) -> dict[str, Any] | None:
    with engine.connect() as connection:
        row = connection.execute(
            select(rounds, datasets.c.name.label("dataset"))
            .join(datasets, datasets.c.id == rounds.c.dataset_id)
            .where(rounds.c.id == round_id)
        ).first()
    return _public(row._mapping) if row is not None else None


def list_rounds(engine: Engine, dataset_id: int | None = None) -> list[dict[str, Any]]:
    query = select(rounds, datasets.c.name.label("dataset")).join(
        datasets, datasets.c.id == rounds.c.dataset_id
    )
    if dataset_id is not None:
        query = query.where(rounds.c.dataset_id == dataset_id)
    with engine.connect() as connection:
        return [_public(row._mapping) for row in connection.execute(query.order_by(rounds.c.id)).all()]


def previous_round(engine: Engine, dataset_id: int, before_id: int) -> dict[str, Any] | None:
    """The latest succeeded round of the dataset created before `before_id`: the warm start of the next one."""
    with engine.connect() as connection:
        found = connection.execute(
            select(func.max(rounds.c.id)).where(
                rounds.c.dataset_id == dataset_id, rounds.c.status == "succeeded", rounds.c.id < before_id
            )
        ).scalar()
    return get_round(engine, found) if found is not None else None


def _public(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "dataset": row["dataset"],
        "dataset_id": row["dataset_id"],
        "status": row["status"],
        "stage": row["stage"],
        "policy_stage": row["policy_stage"],
        "snapshot": row["snapshot_version"],
        "pair_watermark": row["pair_watermark"],
        "attempts": row["attempts"],
        "worker": row["worker"],
        "lease_expires_at": row["lease_expires_at"],
        "output_dir": row["output_dir"],
        "logs_path": row["logs_path"],
        "executor_job": row["executor_job"],
        "metrics": json.loads(row["metrics_json"]) if row["metrics_json"] else {},
        "lineage": json.loads(row["lineage_json"]) if row["lineage_json"] else {},
        "error": row["error"],
        "created_by": row["created_by"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }
