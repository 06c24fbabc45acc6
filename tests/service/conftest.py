"""Service test fixtures: a throwaway PostgreSQL cluster, stores on SQLite and PostgreSQL, real servers.

PostgreSQL: `initdb` + `pg_ctl` from PATH or /usr/lib/postgresql/*/bin (Debian's `postgresql`, which .ci/run
installs) start a private cluster on a free loopback port. PostgreSQL refuses to run as root, so as root the
cluster runs as `nobody` (runuser). Without the binaries the PostgreSQL tests FAIL, they are not skipped:
install them (apt-get install postgresql) or point ALIGNMENT_TEST_PG_URL at a server you own
(postgresql+psycopg://USER@HOST:PORT/DB; each test store gets a database of its own there).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.servers import TemporaryPostgres, new_database
from tests.service.helpers import ServerProcess

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """Base URL (no database) of a PostgreSQL server for this session."""
    existing = os.environ.get("ALIGNMENT_TEST_PG_URL")
    if existing:
        yield existing.rsplit("/", 1)[0]
        return
    try:
        cluster = TemporaryPostgres()
        base_url = cluster.__enter__()
    except RuntimeError as error:
        pytest.fail(str(error))
    try:
        yield base_url
    finally:
        cluster.__exit__()


@pytest.fixture
def make_db_url(request: pytest.FixtureRequest, tmp_path: Path):
    """A function backend -> URL of a new, empty store."""

    def make(backend: str) -> str:
        if backend == "sqlite":
            return f"sqlite:///{tmp_path / f'store-{uuid.uuid4().hex[:6]}.db'}"
        return new_database(request.getfixturevalue("postgres_server"))

    return make


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session", params=BACKENDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A real `alignment serve` on loopback over a fresh store, one per backend for the session (each test
    uses datasets of its own)."""
    tmp = tmp_path_factory.mktemp(f"server-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{tmp / 'store.db'}"
    else:
        url = new_database(request.getfixturevalue("postgres_server"))
    process = ServerProcess(url, tmp, backend=request.param)
    process.start()
    try:
        yield process
    finally:
        process.stop()
