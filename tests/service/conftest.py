"""Service test fixtures: a throwaway PostgreSQL cluster, stores on SQLite and PostgreSQL, real servers.

PostgreSQL: `initdb` + `pg_ctl` from PATH or /usr/lib/postgresql/*/bin (Debian's `postgresql`, which .ci/run
installs) start a private cluster on a free loopback port. PostgreSQL refuses to run as root, so as root the
cluster runs as `nobody` (runuser). Without the binaries the PostgreSQL tests FAIL, they are not skipped:
install them (apt-get install postgresql) or point ALIGNMENT_TEST_PG_URL at a server you own
(postgresql+psycopg://USER@HOST:PORT/DB; each test store gets a database of its own there).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.helpers import ServerProcess, free_port

BACKENDS = ("sqlite", "postgresql")


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return candidates[-1] if candidates else None


def _as_cluster_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "nobody", "--", *command]


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL (no database) of a PostgreSQL server for this session."""
    existing = os.environ.get("ALIGNMENT_TEST_PG_URL")
    if existing:
        yield existing.rsplit("/", 1)[0]
        return
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.fail(
            "PostgreSQL binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin: "
            "install Debian's postgresql (`apt-get install -y postgresql`, as .ci/run does) or set "
            "ALIGNMENT_TEST_PG_URL=postgresql+psycopg://USER@HOST:PORT/DB"
        )
    # Not under pytest's tmp (0700, root's): the cluster user must own its data directory.
    base = Path(tempfile.mkdtemp(prefix="alignment-pg-"))
    data = base / "data"
    if os.geteuid() == 0:
        shutil.chown(base, "nobody")
    os.chmod(base, 0o755)
    port = free_port()
    subprocess.run(
        _as_cluster_user(
            [initdb, "-D", str(data), "-U", "alignment", "--auth=trust", "-E", "UTF8", "--no-sync"]
        ),
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c max_connections=200"
    started = subprocess.run(
        _as_cluster_user([pg_ctl, "-D", str(data), "-l", str(base / "log"), "-o", options, "-w", "start"]),
        capture_output=True,
        text=True,
    )
    if started.returncode != 0:
        log = (base / "log").read_text() if (base / "log").exists() else ""
        pytest.fail(f"pg_ctl start failed: {started.stderr}\n{log[-2000:]}")
    try:
        yield f"postgresql+psycopg://alignment@127.0.0.1:{port}"
    finally:
        subprocess.run(
            _as_cluster_user([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"]), capture_output=True
        )
        shutil.rmtree(base, ignore_errors=True)


def new_postgres_database(base_url: str) -> str:
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(base_url + "/postgres")
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(
        host=url.host,
        port=url.port,
        user=url.username,
        password=url.password,
        dbname="postgres",
        autocommit=True,
    ) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return f"{base_url}/{name}"


@pytest.fixture
def make_db_url(request: pytest.FixtureRequest, tmp_path: Path):
    """A function backend -> URL of a new, empty store."""

    def make(backend: str) -> str:
        if backend == "sqlite":
            return f"sqlite:///{tmp_path / f'store-{uuid.uuid4().hex[:6]}.db'}"
        return new_postgres_database(request.getfixturevalue("postgres_server"))

    return make


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module", params=BACKENDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A real `alignment serve` on loopback over a fresh store, one per backend per test module."""
    tmp = tmp_path_factory.mktemp(f"server-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{tmp / 'store.db'}"
    else:
        url = new_postgres_database(request.getfixturevalue("postgres_server"))
    process = ServerProcess(url, tmp, backend=request.param)
    process.start()
    try:
        yield process
    finally:
        process.stop()
