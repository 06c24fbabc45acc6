"""The store itself: migrations on both backends, SQLite's crash-safety settings, hashed tokens, W&B lineage."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from sqlalchemy import select, text

from alignment.service import auth, snapshots
from alignment.service.ingest import check_row, store_batch
from alignment.service.store import (
    current_revision,
    datasets,
    head_revision,
    make_engine,
    metadata,
    migrate,
    open_store,
    tokens,
)
from tests.service.helpers import pair
from tests.wandb_offline import find_run_files, summarise


def test_migrations_reach_head_match_the_tables_and_rerun_as_a_no_op(backend: str, make_db_url) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = make_engine(make_db_url(backend))
    assert current_revision(engine) is None
    assert migrate(engine) == head_revision(engine) == "0001"
    assert migrate(engine) == "0001"  # already there: nothing to do, nothing fails
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), metadata) == []
    engine.dispose()


def test_every_sqlite_connection_is_wal_with_synchronous_full(tmp_path: Path) -> None:
    engine = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    for _ in range(2):  # a fresh pool connection each time gets the same settings
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert connection.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
            assert connection.execute(text("PRAGMA busy_timeout")).scalar() == 30000
            assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
        engine.dispose()


def test_tokens_are_stored_only_as_hashes_and_scopes_nest(tmp_path: Path) -> None:
    engine = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    token = auth.create_token(engine, "alice", "submit")
    assert token.startswith("alg_") and len(token) > 40
    with engine.connect() as connection:
        stored = connection.execute(select(tokens.c.token_hash)).scalar_one()
    assert stored == hashlib.sha256(token.encode()).hexdigest() and token not in stored
    assert "token_hash" not in auth.list_tokens(engine)[0]
    principal = auth.authenticate(engine, token)
    assert principal is not None and principal.name == "alice"
    assert principal.allows("read") and principal.allows("submit") and not principal.allows("admin")
    assert auth.authenticate(engine, token + "x") is None
    assert auth.revoke_token(engine, name="alice") == 1
    assert auth.authenticate(engine, token) is None


def test_a_snapshot_is_logged_as_a_version_of_a_wandb_dataset_artifact(tmp_path: Path) -> None:
    engine = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    token_id = auth.authenticate(engine, auth.create_token(engine, "admin", "admin")).token_id
    with engine.begin() as connection:
        connection.execute(datasets.insert().values(name="hh", created_at=0.0))
    checked = [check_row(i, pair(i)) for i in range(3)]
    assert store_batch(engine, 1, "hh", token_id, checked, None)[1]["accepted"] == 3
    record, created = snapshots.create_snapshot(
        engine, tmp_path / "snaps", 1, "hh", token_id, "offline", "proj"
    )
    assert created and record["wandb"].startswith("offline:")
    (run_file,) = find_run_files(tmp_path / "snaps" / ".tracking")
    summary = summarise(run_file)
    assert summary["run"]["job_type"] == "snapshot"
    (name, kind, meta) = next(a for a in summary["artifacts"] if a[1] == "dataset")
    assert name == "service-hh" and kind == "dataset"
    assert json.loads(meta)["version"] == record["version"] and json.loads(meta)["pairs"] == 3
    manifest = json.loads((Path(record["path"]) / "MANIFEST.json").read_text())
    assert manifest["source"] == f"service:hh@{record['version']}" and manifest["pairs"] == 3


def test_writes_take_the_sqlite_write_lock_at_begin_and_reads_never_wait(tmp_path: Path) -> None:
    import sqlite3

    from alignment.service.store import writing

    path = tmp_path / "store.db"
    engine = open_store(f"sqlite:///{path}")
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    with writing(engine) as connection:
        connection.execute(select(tokens.c.id)).all()  # only a read so far, yet the write lock is held
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        assert other.execute("SELECT count(*) FROM tokens").fetchone() == (0,)  # WAL: readers go on
    other.execute("BEGIN IMMEDIATE")  # released at commit
    other.execute("ROLLBACK")
    other.close()
