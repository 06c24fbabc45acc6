"""Preference-data service throughput: accepted pairs per second and request latency under concurrent submitters.

    python -m bench service [--backends sqlite,postgresql] [--clients 1,8,32] [--batch 100] [--seconds 10]
                            [--pg-url postgresql+psycopg://USER@HOST:PORT] [--out runs/bench/service]

For each backend a fresh store and a real `alignment serve` on loopback (SQLite: WAL + synchronous=FULL, so every
acknowledged batch is on disk; PostgreSQL: a throwaway cluster started with initdb/pg_ctl unless --pg-url names
a server, default settings, fsync on). For each client count, that many concurrent submitters (asyncio tasks,
one keep-alive connection each, one token each, rate limit off) POST batches of `--batch` new, distinct, valid
pairs with an Idempotency-Key for `--seconds` after a 1 s warm-up. Pairs/s counts pairs the server answered
`accepted`; latency is per request, client-side. The client runs on the same cores as the server.
Results: `<out>/result.json` and a Markdown table on stdout (what docs/BENCHMARKS.md quotes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from bench.servers import ServerProcess


def _body(client: int, batch: int, size: int) -> bytes:
    rows = [
        {
            "prompt": f"c{client} b{batch} r{i}: how do I keep a sourdough starter alive?",
            "chosen": "Feed it flour and water daily and keep it at room temperature.",
            "rejected": f"Leave it in the fridge for a year ({client}-{batch}-{i}).",
            "metadata": {"annotator": f"bench-{client}", "margin": 1.0},
        }
        for i in range(size)
    ]
    return json.dumps({"pairs": rows}).encode()


async def _client(
    url: str, token: str, dataset: str, index: int, size: int, start: float, end: float
) -> tuple:
    accepted, latencies, batch = 0, [], 0
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as client:
        while time.perf_counter() < end:
            body = _body(index, batch, size)
            sent = time.perf_counter()
            response = await client.post(
                f"/v1/datasets/{dataset}/pairs", content=body, headers={"Idempotency-Key": f"{index}-{batch}"}
            )
            took = time.perf_counter() - sent
            batch += 1
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
            if sent >= start:  # after the warm-up
                accepted += response.json()["accepted"]
                latencies.append(took)
    return accepted, latencies


async def _measure(
    url: str, tokens: list[str], dataset: str, clients: int, size: int, seconds: float
) -> dict:
    start = time.perf_counter() + 1.0
    end = start + seconds
    results = await asyncio.gather(
        *(_client(url, tokens[i], dataset, i, size, start, end) for i in range(clients))
    )
    elapsed = max(time.perf_counter(), end) - start
    latencies = sorted(latency for _, lat in results for latency in lat)
    accepted = sum(count for count, _ in results)
    return {
        "clients": clients,
        "batch": size,
        "requests": len(latencies),
        "accepted_pairs": accepted,
        "pairs_per_s": accepted / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    }


def run_backend(
    backend: str, db_url: str, tmp: Path, clients: list[int], size: int, seconds: float
) -> list[dict]:
    from alignment.service.auth import create_token
    from alignment.service.store import open_store

    server = ServerProcess(
        db_url,
        tmp,
        backend=backend,
        limits={"max_batch_pairs": max(size, 100), "max_body_bytes": 64 << 20, "requests_per_second": 0},
    )
    server.start()
    try:
        dataset = server.dataset(f"bench-{backend}")
        engine = open_store(db_url)
        tokens = [create_token(engine, f"bench-{i}", "submit") for i in range(max(clients))]
        engine.dispose()
        rows = []
        for count in clients:
            row = {
                "backend": backend,
                **asyncio.run(_measure(server.url, tokens, dataset, count, size, seconds)),
            }
            print(
                f"{backend:10s} clients {count:3d}: {row['pairs_per_s']:8.0f} pairs/s, "
                f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms",
                flush=True,
            )
            rows.append(row)
        return rows
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench service", description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--pg-url", help="an existing server (no database part); default: a throwaway cluster"
    )
    parser.add_argument("--out", default="runs/bench/service")
    args = parser.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    with ExitStack() as stack:
        for backend in args.backends.split(","):
            tmp = out / backend
            tmp.mkdir(parents=True, exist_ok=True)
            if backend == "sqlite":
                (tmp / "store.db").unlink(missing_ok=True)
                url = f"sqlite:///{(tmp / 'store.db').resolve()}"
            elif backend == "postgresql":
                from bench.servers import TemporaryPostgres, new_database

                base = args.pg_url or stack.enter_context(TemporaryPostgres())
                url = new_database(base)
            else:
                raise SystemExit(f"unknown backend {backend!r}: sqlite or postgresql")
            rows += run_backend(backend, url, tmp, clients, args.batch, args.seconds)
    (out / "result.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(
        "\n| backend | clients | batch | accepted pairs/s | p50 ms | p99 ms | requests |\n|---|---:|---:|---:|---:|---:|---:|"
    )
    for row in rows:
        print(
            f"| {row['backend']} | {row['clients']} | {row['batch']} | {row['pairs_per_s']:.0f} | "
            f"{row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['requests']} |"
        )
