"""Kill -9 the server under concurrent submitters, on SQLite and on PostgreSQL: after a restart every acknowledged
pair is stored exactly once, no batch is half-stored, and retrying the unanswered batches with their idempotency
keys completes the data set without a duplicate."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
from sqlalchemy import func, select

from alignment.service.ingest import check_row
from alignment.service.store import make_engine, pairs
from tests.service.helpers import ServerProcess, pair

CLIENTS = 8
BATCH = 20


def test_kill_minus_9_during_concurrent_submits_loses_and_duplicates_nothing(
    backend: str, make_db_url, tmp_path: Path
) -> None:
    server = ServerProcess(make_db_url(backend), tmp_path, backend=backend)
    server.start()
    name = server.dataset("crash")
    acknowledged: dict[str, list[dict]] = {}
    unanswered: dict[str, list[dict]] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def submitter(client_index: int) -> None:
        with server.client("submit") as client:
            for batch_index in range(10_000):
                key = f"c{client_index}-b{batch_index}"
                rows = [pair(i, f"{key}-") for i in range(BATCH)]
                try:
                    response = client.post(
                        f"/v1/datasets/{name}/pairs", json={"pairs": rows}, headers={"Idempotency-Key": key}
                    )
                except httpx.TransportError:
                    with lock:
                        unanswered[key] = rows
                    return
                assert response.status_code == 200, response.text
                assert response.json()["accepted"] == BATCH
                with lock:
                    acknowledged[key] = rows
                if stop.is_set():
                    return

    threads = [threading.Thread(target=submitter, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    deadline = time.time() + 60
    while len(acknowledged) < 3 * CLIENTS and time.time() < deadline:
        time.sleep(0.05)
    server.kill9()  # mid-load: requests are in flight
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    assert len(acknowledged) >= 3 * CLIENTS and unanswered, (len(acknowledged), len(unanswered))

    engine = make_engine(server.db_url)

    def stored_count(rows: list[dict]) -> int:
        hashes = [check_row(0, row).content_hash for row in rows]
        with engine.connect() as connection:
            return connection.execute(
                select(func.count()).where(pairs.c.content_hash.in_(hashes))
            ).scalar_one()

    server.start()  # a fresh process on the same store after the crash
    try:
        for key, rows in acknowledged.items():
            assert stored_count(rows) == BATCH, f"acknowledged batch {key} not fully stored"
        for key, rows in unanswered.items():
            assert stored_count(rows) in (0, BATCH), f"batch {key} half-stored"
        with server.client("submit") as client:  # retry what got no answer, with the same keys
            for key, rows in unanswered.items():
                response = client.post(
                    f"/v1/datasets/{name}/pairs", json={"pairs": rows}, headers={"Idempotency-Key": key}
                )
                assert response.status_code == 200
                assert {r["status"] for r in response.json()["results"]} == {"accepted"}
        with engine.connect() as connection:
            total = connection.execute(select(func.count()).select_from(pairs)).scalar_one()
        assert total == BATCH * (len(acknowledged) + len(unanswered))  # every pair once, none twice
    finally:
        server.stop()
        engine.dispose()
