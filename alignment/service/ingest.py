"""Turning a submitted batch into stored pairs: per-row validation, dedup, idempotency, one transaction.

Each row goes through the training data's own converter and validator (`alignment.data.formats` preference
converter, `alignment.data.validate.validate_row`), so a pair the service accepts is a pair every stage accepts.
Rows get one result each, in order: `accepted` (with its id), `duplicate` (the same normalised content is
already stored in this dataset, or earlier in the batch), or `rejected` with a reason code.

What a duplicate reveals: the stored pair's `id` only when that pair is the caller's own (earlier in the batch, or
submitted before by the same token) or the caller is an admin. For another submitter's pair a `submit` token sees
`duplicate` with the detail "already stored by another submitter" and no id, so the service does not tell who
holds which pair, nor hand out ids to retract or look up (that a content exists is what dedup must say anyway).

Retracted content stays retracted: submitting it again is `rejected` with reason `retracted` (the same id rule),
not accepted as new and not a `duplicate`, so a resubmission never undoes a retraction. Only an admin brings
a retracted pair back (`POST /v1/datasets/{name}/restorations`); from then on its content is a `duplicate` again.

Dedup key: SHA-256 of the normalised prompt / chosen / rejected messages (Unicode NFC, whitespace runs collapsed,
ends stripped); metadata does not count. A unique index (dataset, content hash) makes it hold under concurrency:
a batch that loses a race is retried and then sees the other's rows as duplicates.

The whole batch, and its idempotency record, commit in one transaction: a crash leaves all or nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
import unicodedata
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from alignment.data.formats import convert_preference
from alignment.data.validate import REASONS, RowError, validate_row
from alignment.service.store import idempotency_keys, pairs, writing

SERVICE_REASONS: dict[str, str] = {
    **REASONS,
    "unknown_field": "a pair may hold only prompt, chosen, rejected and metadata",
    "bad_metadata": "metadata must be an object of annotator, source, margin, score, tags, extra",
    "invalid_text": "text holds a lone UTF-16 surrogate (an escape in \\ud800-\\udfff), which is not Unicode",
    "non_finite_metadata": "metadata.margin and metadata.score must be finite numbers, not NaN or Infinity",
    "retracted": "this content was retracted from the dataset and stays out until an admin restores the pair "
    "(POST /v1/datasets/{name}/restorations)",
}
ROW_FIELDS = ("prompt", "chosen", "rejected", "metadata")
METADATA_TYPES: dict[str, tuple[type, ...]] = {
    "annotator": (str,),
    "source": (str,),
    "margin": (int, float),
    "score": (int, float),
    "tags": (list,),
    "extra": (dict,),
}
_WHITESPACE = re.compile(r"\s+")


@dataclass
class Checked:
    """One submitted row after validation: either a canonical row to store, or a reject."""

    index: int
    row: dict[str, Any] | None = None
    content_hash: str = ""
    reason: str = ""
    detail: str = ""


def normalise_text(text: str) -> str:
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


def content_hash(row: dict[str, Any]) -> str:
    """Hash of the normalised messages of a canonical preference row (metadata excluded)."""
    key = [
        [[message["role"], normalise_text(message["content"])] for message in row[side]]
        for side in ("prompt", "chosen", "rejected")
    ]
    return hashlib.sha256(json.dumps(key, ensure_ascii=False).encode()).hexdigest()


def _check_metadata(metadata: Any) -> tuple[str, str] | None:
    """(reason code, what is wrong) with `metadata`, or None."""
    if not isinstance(metadata, dict):
        return "bad_metadata", f"metadata should be an object, got {type(metadata).__name__}"
    for key, value in metadata.items():
        if key not in METADATA_TYPES:
            return "bad_metadata", f"unknown metadata key {key!r}; allowed: {', '.join(METADATA_TYPES)}"
        if value is None:
            continue
        expected = METADATA_TYPES[key]
        if not isinstance(value, expected) or isinstance(value, bool):
            return "bad_metadata", f"metadata.{key} should be {' or '.join(t.__name__ for t in expected)}"
        if isinstance(value, float) and not math.isfinite(value):  # JSON's NaN / Infinity extensions
            return "non_finite_metadata", f"metadata.{key} is {value}; it would reach the RM loss as such"
        if key == "tags" and not all(isinstance(tag, str) for tag in value):
            return "bad_metadata", "metadata.tags should be a list of strings"
    return None


def check_row(index: int, item: Any) -> Checked:
    """Validate one submitted row into a canonical preference row (with metadata), or a reject."""
    if not isinstance(item, dict):
        return Checked(
            index, reason="wrong_type", detail=f"a pair must be an object, got {type(item).__name__}"
        )
    unknown = sorted(set(item) - set(ROW_FIELDS))
    if unknown:
        return Checked(index, reason="unknown_field", detail=f"unknown field(s) {', '.join(unknown)}")
    metadata = item.get("metadata") or {}
    problem = _check_metadata(metadata)
    if problem:
        return Checked(index, reason=problem[0], detail=problem[1])
    try:
        (row,) = convert_preference(
            {k: item[k] for k in ("prompt", "chosen", "rejected") if k in item}, "preference"
        )
    except RowError as error:
        return Checked(index, reason=error.reason, detail=error.detail)
    reason = validate_row(row, "preference")
    if reason:
        return Checked(index, reason=reason, detail=SERVICE_REASONS[reason])
    metadata = {k: v for k, v in metadata.items() if v is not None}
    if metadata:
        row["metadata"] = metadata
    try:
        json.dumps(row, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as error:
        return Checked(
            index, reason="invalid_text", detail=f"{SERVICE_REASONS['invalid_text']} ({error.reason})"
        )
    return Checked(index, row=row, content_hash=content_hash(row))


def request_hash(dataset: str, body: bytes) -> str:
    return hashlib.sha256(dataset.encode() + b"\0" + body).hexdigest()


class IdempotencyConflict(Exception):
    """The idempotency key was used before with a different request body."""


def _stored_response(connection: Connection, token_id: int, key: str, digest: str) -> tuple[int, dict] | None:
    row = connection.execute(
        select(
            idempotency_keys.c.request_hash, idempotency_keys.c.status_code, idempotency_keys.c.response_json
        ).where(idempotency_keys.c.token_id == token_id, idempotency_keys.c.key == key)
    ).first()
    if row is None:
        return None
    if row.request_hash != digest:
        raise IdempotencyConflict(key)
    return row.status_code, json.loads(row.response_json)


def replayed(engine: Engine, token_id: int, key: str, digest: str) -> tuple[int, dict] | None:
    """The first response to this (token, key), or None; IdempotencyConflict when the body differs."""
    with engine.connect() as connection:
        return _stored_response(connection, token_id, key, digest)


def store_batch(
    engine: Engine,
    dataset_id: int,
    dataset_name: str,
    token_id: int,
    checked: list[Checked],
    idempotency: tuple[str, str] | None,
    reveal_all: bool = False,
) -> tuple[int, dict]:
    """Store the valid rows of a batch (and the response under its idempotency key) in one transaction.

    `reveal_all` (admin callers) shows the stored id of every duplicate or retracted row, not only of the
    caller's own pairs. Returns (status code, response body). A unique-index race with a concurrent batch is
    retried."""
    for attempt in range(8):
        try:
            with writing(engine) as connection:
                if idempotency is not None:
                    earlier = _stored_response(connection, token_id, *idempotency)
                    if earlier is not None:
                        return earlier
                response = _insert(connection, dataset_id, dataset_name, token_id, checked, reveal_all)
                if idempotency is not None:
                    connection.execute(
                        insert(idempotency_keys).values(
                            token_id=token_id,
                            key=idempotency[0],
                            request_hash=idempotency[1],
                            status_code=200,
                            response_json=json.dumps(response),
                            created_at=time.time(),
                        )
                    )
                return 200, response
        except (IntegrityError, OperationalError) as error:
            if attempt == 7 or (isinstance(error, OperationalError) and "locked" not in str(error)):
                raise
            time.sleep(0.01 * (attempt + 1))
    raise AssertionError("unreachable")


def _stored_by_hash(connection: Connection, dataset_id: int, hashes: list[str]) -> dict[str, Any]:
    """content hash -> the stored pair's (id, submitted_by, retracted_at) row."""
    found: dict[str, Any] = {}
    for start in range(0, len(hashes), 500):
        query = select(pairs.c.id, pairs.c.content_hash, pairs.c.submitted_by, pairs.c.retracted_at).where(
            pairs.c.dataset_id == dataset_id, pairs.c.content_hash.in_(hashes[start : start + 500])
        )
        found.update((row.content_hash, row) for row in connection.execute(query))
    return found


def _insert(
    connection: Connection,
    dataset_id: int,
    dataset_name: str,
    token_id: int,
    checked: list[Checked],
    reveal_all: bool = False,
) -> dict:
    valid = [item for item in checked if item.row is not None]
    existing = _stored_by_hash(connection, dataset_id, list({item.content_hash for item in valid}))
    now = time.time()
    new_rows: list[dict[str, Any]] = []
    first_in_batch: dict[str, int] = {}
    for item in valid:
        if item.content_hash not in existing and item.content_hash not in first_in_batch:
            first_in_batch[item.content_hash] = item.index
            new_rows.append(
                {
                    "dataset_id": dataset_id,
                    "content_hash": item.content_hash,
                    "row_json": json.dumps(item.row, ensure_ascii=False, sort_keys=True),
                    "submitted_by": token_id,
                    "created_at": now,
                }
            )
    new_ids: dict[str, int] = {}
    if new_rows:
        # A plain executemany, then the ids by hash: RETURNING would insert row by row on SQLite.
        connection.execute(insert(pairs), new_rows)
        new_ids = {
            digest: row.id
            for digest, row in _stored_by_hash(connection, dataset_id, list(first_in_batch)).items()
        }
    results: list[dict[str, Any]] = []
    counts = {"accepted": 0, "duplicate": 0, "rejected": 0}
    for item in checked:
        if item.row is None:
            result = {"index": item.index, "status": "rejected", "reason": item.reason, "detail": item.detail}
        elif first_in_batch.get(item.content_hash) == item.index:
            result = {"index": item.index, "status": "accepted", "id": new_ids[item.content_hash]}
        elif item.content_hash in new_ids:
            result = {"index": item.index, "status": "duplicate", "id": new_ids[item.content_hash]}
            result["detail"] = "earlier in this batch"
        else:
            stored = existing[item.content_hash]
            own = stored.submitted_by == token_id
            if stored.retracted_at is not None:
                detail = SERVICE_REASONS["retracted"].replace("{name}", dataset_name)
                result = {"index": item.index, "status": "rejected", "reason": "retracted", "detail": detail}
            else:
                detail = "already stored" if own else "already stored by another submitter"
                result = {"index": item.index, "status": "duplicate", "detail": detail}
            if own or reveal_all:
                result["id"] = stored.id
        counts[result["status"]] += 1
        results.append(result)
    return {"dataset": dataset_name, **counts, "results": results}
