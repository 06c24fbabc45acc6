"""Servers the service benchmark and the service tests run against, started for real on loopback.

- `ServerProcess`: a real `alignment serve` in a subprocess on a free loopback port, over a given store, with a
  token of each scope (`admin`, `submit`, `read`) made first.
- `TemporaryPostgres` / `new_database`: a throwaway PostgreSQL cluster (initdb + pg_ctl) on a free loopback port,
  and empty databases on it. PostgreSQL refuses to run as root, so as root the cluster runs as `nobody` (runuser)
  in a directory it owns. The binaries come from PATH or Debian's /usr/lib/postgresql/<version>/bin (package
  `postgresql`).

Here, beside `python -m bench service`, rather than in tests/: the benchmark needs them, and benchmarks never
import the tests (the tests import them from here).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`alignment serve --config <tmp>/service.yaml` over `db_url`; tokens `admin`, `submit`, `read` made first."""

    def __init__(self, db_url: str, tmp: Path, backend: str = "sqlite", **config: Any) -> None:
        self.db_url, self.tmp, self.backend = db_url, Path(tmp), backend
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.snapshot_dir = self.tmp / "snapshots"
        self.config = {
            "db": db_url,
            "host": "127.0.0.1",
            "port": self.port,
            "snapshot_dir": str(self.snapshot_dir),
            "tracking": "disabled",
            "limits": {"max_body_bytes": 200_000, "max_batch_pairs": 100, "requests_per_second": 0},
            **config,
        }
        self.config_path = self.tmp / "service.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.process: subprocess.Popen | None = None
        self.tokens: dict[str, str] = {}

    def start(self) -> None:
        from alignment.service.auth import create_token
        from alignment.service.store import open_store

        if not self.tokens:
            engine = open_store(self.db_url)
            self.tokens = {
                scope: create_token(engine, f"test-{scope}", scope) for scope in ("admin", "submit", "read")
            }
            engine.dispose()
        self.log = open(self.tmp / f"server-{time.time_ns()}.log", "w")  # noqa: SIM115 - closed by stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "alignment.cli", "serve", "--config", str(self.config_path)],
            cwd=REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "ALIGNMENT_SERVICE_SNAPSHOTS": str(self.snapshot_dir)},
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited {self.process.returncode}: {self.log_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server did not answer within 60 s: {self.log_text()[-3000:]}")

    def log_text(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def kill9(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill9()
        self.log.close()

    def client(self, scope: str = "admin", **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[scope]}"} if scope else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)

    def dataset(self, name: str) -> str:
        with self.client("admin") as admin:
            assert admin.put(f"/v1/datasets/{name}").status_code in (200, 201)
        return name


# ------------------------------------------------------------------------------------ a throwaway PostgreSQL
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
