"""A throwaway PostgreSQL cluster (initdb + pg_ctl) on a free loopback port, for service tests and the bench.

PostgreSQL refuses to run as root, so as root the cluster runs as `nobody` (runuser) in a directory it owns.
The binaries come from PATH or Debian's /usr/lib/postgresql/<version>/bin (package `postgresql`).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from tests.service.helpers import free_port

MISSING = (
    "PostgreSQL binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin: install Debian's "
    "postgresql (`apt-get install -y postgresql`, as .ci/run does) or set "
    "ALIGNMENT_TEST_PG_URL=postgresql+psycopg://USER@HOST:PORT/DB"
)


def pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return candidates[-1] if candidates else None


def _as_cluster_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", "nobody", "--", *command] if os.geteuid() == 0 else command


class TemporaryPostgres:
    """`with TemporaryPostgres() as base_url:` -> `postgresql+psycopg://alignment@127.0.0.1:PORT` (no database)."""

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
        if not self.initdb or not self.pg_ctl:
            raise RuntimeError(MISSING)
        self.base = Path(tempfile.mkdtemp(prefix="alignment-pg-"))  # not 0700 root-owned like pytest's tmp
        self.data = self.base / "data"

    def __enter__(self) -> str:
        if os.geteuid() == 0:
            shutil.chown(self.base, "nobody")
        os.chmod(self.base, 0o755)
        port = free_port()
        subprocess.run(
            _as_cluster_user(
                [
                    self.initdb,
                    "-D",
                    str(self.data),
                    "-U",
                    "alignment",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]
            ),
            check=True,
            capture_output=True,
        )
        options = f"-p {port} -k {self.base} -c listen_addresses=127.0.0.1 -c max_connections=200"
        command = [
            self.pg_ctl,
            "-D",
            str(self.data),
            "-l",
            str(self.base / "log"),
            "-o",
            options,
            "-w",
            "start",
        ]
        started = subprocess.run(_as_cluster_user(command), capture_output=True, text=True)
        if started.returncode != 0:
            log = (self.base / "log").read_text() if (self.base / "log").exists() else ""
            self.__exit__()
            raise RuntimeError(f"pg_ctl start failed: {started.stderr}\n{log[-2000:]}")
        return f"postgresql+psycopg://alignment@127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        if (self.data / "postmaster.pid").exists():
            stop = [self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"]
            subprocess.run(_as_cluster_user(stop), capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)


def new_database(base_url: str) -> str:
    """Create an empty database on the server of `base_url`; returns its URL."""
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
