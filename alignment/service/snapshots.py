"""Snapshots: the accepted, unretracted pairs of a dataset frozen into an immutable, content-addressed version.

    <snapshot_dir>/<dataset>/<version>/pairs.jsonl      canonical preference rows, ordered by pair id
    <snapshot_dir>/<dataset>/<version>/MANIFEST.json    dataset, version, pair count, max pair id, time

The format is the data layer's (alignment.data.snapshot: the row, the file name, the reader's hash check); this
module writes it from the store. The version is `alignment.data.snapshot.content_hash` of the rows, which is also
the first 16 hex digits of the SHA-256 of pairs.jsonl itself, so a reader can check a file against its name. The same content always gives
the same version (asking twice returns the existing one). Membership is also recorded in the store, so a later
retraction or restoration never changes an earlier snapshot. A retracted pair is left out of every snapshot
frozen while it is retracted; once an admin restores it, it is in every snapshot from the next one on (and when
that brings the content back to an earlier snapshot's, the earlier version is the answer). Stages read a
snapshot with `data: {source: service:NAME@VERSION}` (alignment.data.sources), never the live table.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from alignment import artifacts
from alignment.data.snapshot import SNAPSHOT_FILE, snapshot_row
from alignment.service.store import pairs, snapshot_pairs, snapshots, writing
from alignment.tracking import resolve_mode


def create_snapshot(
    engine: Engine,
    snapshot_root: str | Path,
    dataset_id: int,
    dataset: str,
    token_id: int | None,
    tracking: str = "disabled",
    wandb_project: str = "alignment",
) -> tuple[dict[str, Any], bool]:
    """Freeze the dataset's current accepted pairs; returns (snapshot record, created now?)."""
    root = Path(snapshot_root) / dataset
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".staging-{os.getpid()}-{time.time_ns()}"
    staging.mkdir()
    digest = hashlib.sha256()
    pair_ids: list[int] = []
    with engine.connect() as connection, open(staging / SNAPSHOT_FILE, "w", encoding="utf-8") as handle:
        query = (
            select(pairs.c.id, pairs.c.row_json)
            .where(pairs.c.dataset_id == dataset_id, pairs.c.retracted_at.is_(None))
            .order_by(pairs.c.id)
        )
        for pair_id, row_json in connection.execution_options(yield_per=2000).execute(query):
            line = json.dumps(
                snapshot_row(pair_id, dataset, json.loads(row_json)), sort_keys=True, ensure_ascii=False
            )
            handle.write(line + "\n")
            digest.update(line.encode() + b"\n")
            pair_ids.append(pair_id)
        handle.flush()
        os.fsync(handle.fileno())
    version = digest.hexdigest()[:16]
    existing = get_snapshot(engine, dataset_id, version)
    if existing is not None:
        _remove(staging)
        return existing, False
    final = root / version
    manifest = {
        "kind": "preference_snapshot",
        "dataset": dataset,
        "version": version,
        "pairs": len(pair_ids),
        "max_pair_id": max(pair_ids, default=0),
        "created_at": time.time(),
        "source": f"service:{dataset}@{version}",
    }
    artifacts.publish(staging, final, manifest)
    wandb_ref = log_wandb_artifact(final, dataset, version, len(pair_ids), tracking, wandb_project)
    try:
        with writing(engine) as connection:
            snapshot_id = connection.execute(
                insert(snapshots)
                .values(
                    dataset_id=dataset_id,
                    version=version,
                    pair_count=len(pair_ids),
                    max_pair_id=manifest["max_pair_id"],
                    path=str(final.resolve()),
                    wandb=wandb_ref,
                    created_at=manifest["created_at"],
                    created_by=token_id,
                )
                .returning(snapshots.c.id)
            ).scalar_one()
            for start in range(0, len(pair_ids), 5000):
                connection.execute(
                    insert(snapshot_pairs),
                    [{"snapshot_id": snapshot_id, "pair_id": p} for p in pair_ids[start : start + 5000]],
                )
    except IntegrityError:  # the same content frozen concurrently: that one is the snapshot
        found = get_snapshot(engine, dataset_id, version)
        if found is None:
            raise
        return found, False
    record = get_snapshot(engine, dataset_id, version)
    assert record is not None
    return record, True


def _remove(staging: Path) -> None:
    import shutil

    shutil.rmtree(staging, ignore_errors=True)


def _public(row: Any) -> dict[str, Any]:
    return {
        "version": row.version,
        "pairs": row.pair_count,
        "max_pair_id": row.max_pair_id,
        "path": row.path,
        "source": f"service:{Path(row.path).parent.name}@{row.version}",
        "wandb": row.wandb,
        "created_at": row.created_at,
    }


def get_snapshot(engine: Engine, dataset_id: int, version: str) -> dict[str, Any] | None:
    with engine.connect() as connection:
        row = connection.execute(
            select(snapshots).where(snapshots.c.dataset_id == dataset_id, snapshots.c.version == version)
        ).first()
    return _public(row) if row is not None else None


def list_snapshots(engine: Engine, dataset_id: int) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(snapshots).where(snapshots.c.dataset_id == dataset_id).order_by(snapshots.c.id)
        ).all()
    return [_public(row) for row in rows]


def log_wandb_artifact(
    directory: Path, dataset: str, version: str, count: int, tracking: str, project: str
) -> str | None:
    """Log the snapshot as a version of the W&B dataset artifact `service-<dataset>`; returns 'run id' or None.

    A W&B failure never fails the snapshot (the files and the store are the record); it is reported instead."""
    mode = resolve_mode(tracking)
    if mode == "disabled":
        return None
    import wandb

    try:
        with wandb.init(
            project=project,
            job_type="snapshot",
            name=f"snapshot-{dataset}-{version}",
            dir=str(_tracking_dir(directory)),
            mode=mode,
            reinit="create_new",
            config={"dataset": dataset, "version": version, "pairs": count},
        ) as run:
            artifact = wandb.Artifact(
                f"service-{dataset}",
                type="dataset",
                metadata={"version": version, "pairs": count, "source": f"service:{dataset}@{version}"},
            )
            artifact.add_file(str(directory / SNAPSHOT_FILE))
            run.log_artifact(artifact, aliases=[version])
            return f"{mode}:{run.id}"
    except Exception as error:  # noqa: BLE001 - reported, never fatal for a snapshot already on disk
        return f"error: {type(error).__name__}: {error}"[:500]


def _tracking_dir(directory: Path) -> Path:
    """W&B files of snapshot runs: `<snapshot_dir>/.tracking/wandb/`, outside every dataset's folder."""
    path = directory.parent.parent / ".tracking"
    path.mkdir(parents=True, exist_ok=True)
    return path
