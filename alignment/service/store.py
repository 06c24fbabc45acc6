"""The store: SQLAlchemy Core tables, engines for SQLite and PostgreSQL, and Alembic migrations.

SQLite is the default and is made crash-safe on every connection: WAL journal, `synchronous=FULL` (a commit
is on disk before the client hears "accepted"), a busy timeout and foreign keys on. Every write goes through
`writing(engine)`: `BEGIN IMMEDIATE`, so that two writers queue on the database lock instead of failing with
SQLITE_BUSY when one upgrades a read to a write, behind a lock in this process, so that the server's threads
queue in order rather than in SQLite's sleep-and-retry busy handler (whose back-off made the latency tail).
Reads begin deferred and never wait for a writer (WAL). PostgreSQL (`postgresql+psycopg://...`) needs nothing
special; `writing` is a plain transaction there.

The schema below is the code's view; `alignment/service/migrations/versions/` holds the versioned DDL that
`migrate` applies (Alembic). A test checks that the two agree.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Connection, Engine, make_url

metadata = MetaData()

# BigInteger ids on PostgreSQL, INTEGER PRIMARY KEY (the rowid) on SQLite.
PairId = BigInteger().with_variant(Integer(), "sqlite")

tokens = Table(
    "tokens",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False),
    Column("scope", String(16), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
)

datasets = Table(
    "datasets",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
    Column("created_by", Integer, ForeignKey("tokens.id")),
)

pairs = Table(
    "pairs",
    metadata,
    Column("id", PairId, primary_key=True, autoincrement=True),
    Column("dataset_id", Integer, ForeignKey("datasets.id"), nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("row_json", Text, nullable=False),
    Column("submitted_by", Integer, ForeignKey("tokens.id"), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("retracted_at", Float),
    Column("retracted_by", Integer, ForeignKey("tokens.id")),
    UniqueConstraint("dataset_id", "content_hash", name="uq_pairs_dataset_content"),
    Index("ix_pairs_submitted_by", "submitted_by"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("token_id", Integer, ForeignKey("tokens.id"), nullable=False),
    Column("key", String(200), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("status_code", Integer, nullable=False),
    Column("response_json", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("token_id", "key", name="uq_idempotency_token_key"),
)

snapshots = Table(
    "snapshots",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("dataset_id", Integer, ForeignKey("datasets.id"), nullable=False),
    Column("version", String(16), nullable=False),
    Column("pair_count", Integer, nullable=False),
    Column("max_pair_id", PairId, nullable=False),
    Column("path", Text, nullable=False),
    Column("wandb", Text),
    Column("created_at", Float, nullable=False),
    Column("created_by", Integer, ForeignKey("tokens.id")),
    UniqueConstraint("dataset_id", "version", name="uq_snapshots_dataset_version"),
)

snapshot_pairs = Table(
    "snapshot_pairs",
    metadata,
    Column("snapshot_id", Integer, ForeignKey("snapshots.id"), primary_key=True),
    Column("pair_id", PairId, ForeignKey("pairs.id"), primary_key=True),
)

rounds = Table(
    "rounds",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("dataset_id", Integer, ForeignKey("datasets.id"), nullable=False),
    Column("status", String(16), nullable=False),  # queued, running, succeeded, failed
    Column("stage", String(32), nullable=False),  # queued, snapshot, train, evaluate, done
    Column("policy_stage", String(8), nullable=False),
    Column("snapshot_version", String(16)),
    Column("pair_watermark", PairId, nullable=False),
    Column("worker", String(200)),
    Column("lease_expires_at", Float),
    Column("attempts", Integer, nullable=False),
    Column("output_dir", Text),
    Column("logs_path", Text),
    Column("executor_job", String(64)),
    Column("metrics_json", Text),
    Column("lineage_json", Text),
    Column("error", Text),
    Column("created_by", String(64), nullable=False),  # "api:<token name>" or "trigger"
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("ix_rounds_status", "status"),
)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy's `begin` listener below issues BEGIN itself
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=30000", "foreign_keys=ON"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    immediate = connection.get_execution_options().get("immediate", False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


_WRITE_LOCKS: dict[str, threading.Lock] = {}


@contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """A write transaction (commit on success, rollback on error); see the module docstring for SQLite."""
    if not is_sqlite(engine):
        with engine.begin() as connection:
            yield connection
        return
    lock = _WRITE_LOCKS.setdefault(str(engine.url), threading.Lock())
    with lock, engine.execution_options(immediate=True).begin() as connection:
        yield connection


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(url: str) -> Engine:
    """An engine for `url` with the crash-safety settings above; the SQLite file's folder is created."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, pool_size=8)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if parsed.get_backend_name() == "postgresql":
        return create_engine(url, pool_size=16, max_overflow=16, pool_pre_ping=True)
    raise ValueError(
        f"unsupported database URL {parsed.render_as_string(hide_password=True)}: "
        "use sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DB"
    )


def alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    config.attributes["engine"] = engine
    return config


def migrate(engine: Engine) -> str:
    """Bring the schema to the newest revision (a no-op when it is there); returns that revision."""
    from alembic import command

    command.upgrade(alembic_config(engine), "head")
    return current_revision(engine) or ""


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision(engine: Engine) -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head() or ""


def open_store(url: str) -> Engine:
    """An engine on a migrated store: what every command uses."""
    engine = make_engine(url)
    migrate(engine)
    return engine
