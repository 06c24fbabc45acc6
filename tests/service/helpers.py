"""A real `alignment serve` in a subprocess on a loopback port, with tokens of each scope, for service tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.helpers import REPO


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pair(i: int, tag: str = "") -> dict[str, Any]:
    """A distinct valid text pair."""
    return {
        "prompt": f"question {tag}{i}?",
        "chosen": f"a helpful answer {i}",
        "rejected": f"a poor answer {i}",
    }


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
