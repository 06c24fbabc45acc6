"""`alignment submit FILE --dataset NAME`: send a file of preference pairs in batches, resumably.

Each batch carries an Idempotency-Key derived from the file's content hash, the dataset and the batch's position,
so a retry (after a timeout, a 429, a 5xx or a server restart) can never store a batch twice. Finished batches
are recorded in a progress file under `$ALIGNMENT_HOME/service/submit/`; running the same command again sends
only what is left (`--restart` forgets it). The summary counts accepted / duplicate / rejected rows, with the
reason codes and the file:line of the first rejects.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from alignment.artifacts import write_json_atomic
from alignment.data.sources import Record, read_file
from alignment.service.settings import service_home

RETRYABLE = {429, 500, 502, 503, 504}


class SubmitError(RuntimeError):
    """A batch the server refused for a reason a retry cannot fix (auth, unknown dataset, limits)."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def post_batch(
    client: httpx.Client, dataset: str, rows: list[Any], key: str, attempts: int = 8
) -> dict[str, Any]:
    """POST one batch, retrying transport errors, 429 (after Retry-After) and 5xx with backoff."""
    body = json.dumps({"pairs": rows}, ensure_ascii=False).encode()
    headers = {"Idempotency-Key": key, "Content-Type": "application/json"}
    for attempt in range(attempts):
        try:
            response = client.post(f"/v1/datasets/{dataset}/pairs", content=body, headers=headers)
        except httpx.TransportError as error:
            if attempt == attempts - 1:
                raise SubmitError(f"cannot reach {client.base_url}: {error}") from error
            time.sleep(min(30.0, 0.5 * 2**attempt))
            continue
        if response.status_code == 200:
            return response.json()
        if response.status_code in RETRYABLE and attempt < attempts - 1:
            wait = float(response.headers.get("Retry-After", 0.5 * 2**attempt))
            time.sleep(min(60.0, wait))
            continue
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise SubmitError(f"HTTP {response.status_code} from {client.base_url}: {detail}")
    raise AssertionError("unreachable")


def _progress_path(sha: str, dataset: str, url: str) -> Path:
    key = hashlib.sha256(f"{sha}\0{dataset}\0{url}".encode()).hexdigest()[:20]
    return service_home() / "submit" / f"{key}.json"


def submit_file(
    path: str | Path, dataset: str, url: str, token: str, batch_size: int = 100, restart: bool = False
) -> int:
    """Submit every record of `path`; print the per-row summary. 0 when every batch went through."""
    from tqdm import tqdm

    path = Path(path)
    if not path.is_file():
        print(f"error: {path} does not exist", file=sys.stderr)
        return 2
    sha = file_sha256(path)
    records: list[Record] = list(read_file(path))
    progress_file = _progress_path(sha, dataset, url)
    progress: dict[str, Any] = {
        "file": str(path),
        "sha256": sha,
        "dataset": dataset,
        "url": url,
        "batches": {},
    }
    if progress_file.is_file() and not restart:
        saved = json.loads(progress_file.read_text())
        if saved.get("batch_size") == batch_size:
            progress = saved
    progress["batch_size"] = batch_size
    progress_file.parent.mkdir(parents=True, exist_ok=True)

    sendable = [record for record in records if record.error is None]
    local_rejects = [
        {"line": r.line, "reason": r.error, "detail": r.detail} for r in records if r.error is not None
    ]
    batches = [sendable[i : i + batch_size] for i in range(0, len(sendable), batch_size)]
    done = progress["batches"]
    if done:
        print(f"resuming: {len(done)} of {len(batches)} batches already submitted ({progress_file})")
    headers = {"Authorization": f"Bearer {token}"}
    failed: str | None = None
    with (
        httpx.Client(base_url=url, headers=headers, timeout=120) as client,
        tqdm(total=len(sendable), unit="pair", desc=f"submit {dataset}", disable=None) as bar,
    ):
        for index, batch in enumerate(batches):
            if str(index) in done:
                bar.update(len(batch))
                continue
            key = f"submit-{sha[:24]}-{dataset}-{batch_size}-{index}"
            try:
                response = post_batch(client, dataset, [record.value for record in batch], key)
            except SubmitError as error:
                failed = f"batch {index + 1}/{len(batches)} (lines {batch[0].line}-{batch[-1].line}): {error}"
                break
            done[str(index)] = {
                "accepted": response["accepted"],
                "duplicate": response["duplicate"],
                "rejects": [
                    {"line": batch[r["index"]].line, "reason": r["reason"], "detail": r.get("detail", "")}
                    for r in response["results"]
                    if r["status"] == "rejected"
                ],
            }
            write_json_atomic(progress_file, progress)
            bar.update(len(batch))
    _print_summary(path, dataset, progress, local_rejects, len(batches))
    if failed:
        print(f"error: {failed}\nfix it and run the same command again: it resumes after the last batch sent")
        return 1
    return 0


def _print_summary(
    path: Path, dataset: str, progress: dict[str, Any], local_rejects: list[dict], total_batches: int
) -> None:
    batches = progress["batches"].values()
    rejects = local_rejects + [reject for batch in batches for reject in batch["rejects"]]
    accepted = sum(batch["accepted"] for batch in batches)
    duplicate = sum(batch["duplicate"] for batch in batches)
    print(
        f"{path} -> {dataset}: {accepted} accepted, {duplicate} duplicate, {len(rejects)} rejected "
        f"({len(progress['batches'])}/{total_batches} batches)"
    )
    for reason, count in Counter(reject["reason"] for reject in rejects).most_common():
        print(f"  rejected {reason}: {count}")
    for reject in sorted(rejects, key=lambda r: r["line"] or 0)[:10]:
        print(f"  {path}:{reject['line']}: {reject['reason']}: {reject['detail']}")
