"""The HTTP API (FastAPI). OpenAPI docs at /docs and /openapi.json; every /v1 route needs a bearer token.

Errors are JSON `{"error": CODE, "detail": what was wrong and what to do, ...}` with the HTTP status that fits:
400 unreadable body (malformed JSON, invalid UTF-8, nesting deeper than `limits.max_json_depth`), 401
missing/invalid token, 403 wrong scope, 404 unknown dataset / snapshot / round, 413 over a size limit (with
`limit`), 422 a well-formed request that cannot be processed (wrong top-level shape, an idempotency key reused
with another body), 429 over the rate or over the failed authentications of an address (with Retry-After).
Per-row problems are not request errors: they come back as per-row results with a 200.

Every request body passes `RequestGuard` before any route reads, parses or authenticates it: a body over
`limits.max_body_bytes` is refused with 413 (on its Content-Length without reading it, or as soon as a chunked
body's count passes the limit), and one nesting arrays/objects deeper than `limits.max_json_depth` with 400.
"""

from __future__ import annotations

import json
import logging
import re
import time
from array import array
from itertools import accumulate
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alignment import __version__
from alignment.service import ingest, rounds, snapshots
from alignment.service.auth import (
    FailedAuthLimiter,
    Principal,
    RateLimiter,
    authenticate,
    hash_token,
    retry_after_header,
)
from alignment.service.settings import ServiceConfig
from alignment.service.store import current_revision, datasets, open_store, pairs, writing
from alignment.service.store import rounds as rounds_table

logger = logging.getLogger("alignment.service")
DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # fullmatch: `$` would let a final newline in


class ServiceError(Exception):
    def __init__(
        self, status: int, code: str, detail: str, headers: dict | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers, self.extra = status, code, detail, headers, extra


def error_response(
    status: int, code: str, detail: str, headers: dict | None = None, **extra: Any
) -> JSONResponse:
    """The service's error body `{"error": CODE, "detail": ..., **extra}`."""
    return JSONResponse({"error": code, "detail": detail, **extra}, status_code=status, headers=headers)


PairIdValue = Annotated[int, Field(ge=1, le=2**63 - 1)]


class RoundRequest(BaseModel):
    dataset: str
    policy_stage: str | None = Field(None, description="dpo or ppo (default: the service config's)")
    snapshot: str | None = Field(None, description="an existing snapshot version (default: snapshot now)")


class Retraction(BaseModel):
    ids: list[PairIdValue] | None = Field(None, description="pair ids to retract")
    submitter: str | None = Field(None, description="retract every pair submitted by tokens of this name")


class Restoration(BaseModel):
    ids: list[PairIdValue] = Field(description="ids of retracted pairs to bring back")


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NESTING_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 / -1 as signed bytes
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[{]}")))


def json_depth(body: bytes) -> int:
    """How deep `body` nests arrays and objects, counted without parsing it (strings are skipped, so a bracket
    inside one does not count): the maximum running sum of +1 per `[`/`{` and -1 per `]`/`}`, in C loops
    (about 0.1 s for 8 MiB), where `json.loads` would recurse once per level and fail with RecursionError."""
    steps = _JSON_STRING.sub(b"", body).translate(_NESTING_STEPS, delete=_NOT_BRACKETS)
    return max(accumulate(array("b", steps)), default=0)


class RequestGuard:
    """ASGI middleware: bounds every request body in size and nesting before any route reads, parses or
    authenticates it. A Content-Length over `max_bytes` is answered 413 at once, without reading the body; a
    body without one (chunked) is counted as it arrives and answered 413 as soon as the count passes `max_bytes`.
    A body within the limit is read here (the routes get it replayed) and refused with 400 when it nests deeper
    than `max_depth` (every body this API takes is JSON)."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_depth: int) -> None:
        self.app, self.max_bytes, self.max_depth = app, max_bytes, max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            detail = f"the body of {int(declared)} bytes is over limits.max_body_bytes"
            await self._too_large(scope, receive, send, detail)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send, "the body passed limits.max_body_bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body:
            depth = json_depth(body) if size < 65536 else await run_in_threadpool(json_depth, body)
            if depth > self.max_depth:
                response = error_response(
                    400,
                    "json_too_deep",
                    f"the body nests arrays/objects {depth} deep, over limits.max_json_depth = "
                    f"{self.max_depth}; send flatter JSON",
                    limit=self.max_depth,
                )
                await response(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, what: str) -> None:
        response = error_response(
            413,
            "body_too_large",
            f"{what} = {self.max_bytes} bytes; send less per request (split the batch)",
            {"Connection": "close"},  # the rest of the body is never read: the connection cannot be reused
            limit=self.max_bytes,
        )
        await response(scope, receive, send)


def create_app(config: ServiceConfig, engine: Engine | None = None) -> FastAPI:
    """The application over `config.db` (migrated on start)."""
    engine = engine or open_store(config.db)
    limiter = RateLimiter(config.limits.requests_per_second, config.limits.burst)
    failed_auth = FailedAuthLimiter(config.limits.auth_failures_per_minute)
    dataset_ids: dict[str, int] = {}
    app = FastAPI(
        title="alignment preference-data service",
        version=__version__,
        description="Submit preference pairs, freeze immutable snapshots, run alignment rounds.",
    )
    app.state.engine, app.state.config = engine, config
    app.add_middleware(
        RequestGuard, max_bytes=config.limits.max_body_bytes, max_depth=config.limits.max_json_depth
    )

    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, error: ServiceError) -> JSONResponse:
        return error_response(error.status, error.code, error.detail, error.headers, **error.extra)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()]
        return JSONResponse({"error": "invalid_request", "detail": "; ".join(problems)}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("%s %s failed", request.method, request.url.path)
        detail = f"{type(error).__name__} while handling the request; nothing was half-stored, retry it"
        return JSONResponse({"error": "internal", "detail": detail}, status_code=500)

    def require(scope: str) -> Any:
        def dependency(request: Request, authorization: str | None = Header(None)) -> Principal:
            if not authorization or not authorization.lower().startswith("bearer "):
                raise ServiceError(
                    401,
                    "unauthenticated",
                    "send `Authorization: Bearer <token>` (create one with `alignment tokens create`)",
                    {"WWW-Authenticate": "Bearer"},
                )
            token = authorization[7:].strip()
            address = request.client.host if request.client else "unknown"
            blocked = failed_auth.wait(address, hash_token(token))
            if blocked > 0:
                raise ServiceError(
                    429,
                    "auth_rate_limited",
                    f"over limits.auth_failures_per_minute = {failed_auth.limit} failed authentications from "
                    f"{address} in 60 s: tokens new to this address are not checked until then; check yours "
                    "(`alignment tokens list`) and retry after Retry-After seconds",
                    {"Retry-After": retry_after_header(blocked)},
                    retry_after_s=round(blocked, 3),
                    limit=failed_auth.limit,
                )
            principal = authenticate(engine, token)
            if principal is None:
                failed_auth.failed(address)
                raise ServiceError(
                    401, "invalid_token", "the token is unknown or revoked", {"WWW-Authenticate": "Bearer"}
                )
            failed_auth.succeeded(address, hash_token(token))
            if not principal.allows(scope):
                raise ServiceError(
                    403, "forbidden", f"this needs a token of scope {scope!r}; yours is {principal.scope!r}"
                )
            wait = limiter.acquire(principal.token_id)
            if wait > 0:
                raise ServiceError(
                    429,
                    "rate_limited",
                    f"over {config.limits.requests_per_second:g} requests/s for this token; retry later",
                    {"Retry-After": retry_after_header(wait)},
                    retry_after_s=round(wait, 3),
                )
            return principal

        return Depends(dependency)

    def dataset_id(name: str) -> int:
        if name in dataset_ids:
            return dataset_ids[name]
        with engine.connect() as connection:
            found = connection.execute(select(datasets.c.id).where(datasets.c.name == name)).scalar()
        if found is None:
            raise ServiceError(
                404,
                "unknown_dataset",
                f"dataset {name!r} does not exist; create it with PUT /v1/datasets/{name}",
            )
        dataset_ids[name] = found
        return found

    @app.get("/v1/health", tags=["service"])
    def health() -> dict:
        return {"status": "ok", "version": __version__, "schema": current_revision(engine)}

    @app.put("/v1/datasets/{name}", tags=["datasets"], status_code=201)
    def create_dataset(name: str, principal: Principal = require("admin")) -> Any:
        if not DATASET_NAME.fullmatch(name):
            raise ServiceError(
                422, "bad_name", "a dataset name is 1-64 of letters, digits, _ . - (first alnum)"
            )
        try:
            with writing(engine) as connection:
                connection.execute(
                    insert(datasets).values(name=name, created_at=time.time(), created_by=principal.token_id)
                )
        except IntegrityError:
            return JSONResponse({"name": name, "created": False}, status_code=200)
        return {"name": name, "created": True}

    @app.get("/v1/datasets", tags=["datasets"])
    def list_datasets(_: Principal = require("read")) -> list[dict]:
        with engine.connect() as connection:
            names = connection.execute(select(datasets.c.name).order_by(datasets.c.name)).scalars().all()
        return [{"name": name} for name in names]

    @app.get("/v1/datasets/{name}", tags=["datasets"])
    def get_dataset(name: str, _: Principal = require("read")) -> dict:
        ident = dataset_id(name)
        with engine.connect() as connection:
            counts = dict(
                connection.execute(
                    select(pairs.c.retracted_at.is_(None), func.count())
                    .where(pairs.c.dataset_id == ident)
                    .group_by(pairs.c.retracted_at.is_(None))
                ).all()
            )
        return {
            "name": name,
            "accepted": counts.get(True, 0),
            "retracted": counts.get(False, 0),
            "snapshots": snapshots.list_snapshots(engine, ident),
        }

    @app.post("/v1/datasets/{name}/pairs", tags=["pairs"])
    async def submit_pairs(
        name: str,
        request: Request,
        principal: Principal = require("submit"),
        idempotency_key: str | None = Header(None, max_length=200),
    ) -> Any:
        """Submit a batch `{"pairs": [{"prompt", "chosen", "rejected", "metadata"}, ...]}`; one result per row.

        A row whose content is already stored is `duplicate`, with the stored pair's id when that pair is the
        caller's own or the caller is an admin (another submitter's id is not shown: it would tell who holds what);
        content that was retracted is `rejected` with reason `retracted` (same id rule) until an admin restores it.
        """
        body = await request.body()  # bounded by RequestGuard
        ident = await run_in_threadpool(dataset_id, name)
        digest = ingest.request_hash(name, body)
        key = (idempotency_key, digest) if idempotency_key else None
        try:
            if key is not None:
                earlier = await run_in_threadpool(ingest.replayed, engine, principal.token_id, *key)
                if earlier is not None:
                    return JSONResponse(
                        earlier[1], status_code=earlier[0], headers={"Idempotent-Replay": "true"}
                    )
            items = _parse_batch(body, config.limits.max_batch_pairs)
            checked = [ingest.check_row(index, item) for index, item in enumerate(items)]
            status, response = await run_in_threadpool(
                ingest.store_batch,
                engine,
                ident,
                name,
                principal.token_id,
                checked,
                key,
                reveal_all=principal.allows("admin"),
            )
            if response.get("accepted") and config.rounds.trigger_new_pairs > 0:
                try:
                    await run_in_threadpool(
                        rounds.maybe_trigger,
                        engine,
                        ident,
                        config.rounds.trigger_new_pairs,
                        config.rounds.policy_stage,
                    )
                except Exception:  # noqa: BLE001 - the batch is stored; the rule is checked again next batch
                    logger.exception("trigger rule for dataset %s failed", name)
        except ingest.IdempotencyConflict as conflict:
            raise ServiceError(
                422,
                "idempotency_key_reused",
                f"Idempotency-Key {conflict} was used before with a different body; use a new key for new data",
            ) from None
        return JSONResponse(response, status_code=status)

    def check_ids(ids: list[int]) -> None:
        limit = config.limits.max_retraction_ids
        if len(ids) > limit:
            raise ServiceError(
                413,
                "too_many_ids",
                f"{len(ids)} ids > limits.max_retraction_ids = {limit}; split them over several requests",
                limit=limit,
            )

    @app.post("/v1/datasets/{name}/retractions", tags=["pairs"])
    def retract(name: str, retraction: Retraction, principal: Principal = require("submit")) -> dict:
        """Retract pairs by id or by submitter: later snapshots exclude them, earlier ones never change, and
        submitting the same content again is rejected (reason `retracted`) until an admin restores the pair.
        A `submit` token may retract only its own pairs; an `admin` token anyone's."""
        ident = dataset_id(name)
        if (retraction.ids is None) == (retraction.submitter is None):
            raise ServiceError(422, "invalid_request", "give exactly one of `ids` or `submitter`")
        if retraction.ids is not None:
            check_ids(retraction.ids)
        from alignment.service.store import tokens

        condition = [pairs.c.dataset_id == ident, pairs.c.retracted_at.is_(None)]
        if retraction.ids is not None:
            condition.append(pairs.c.id.in_(retraction.ids))
        else:
            condition.append(
                pairs.c.submitted_by.in_(select(tokens.c.id).where(tokens.c.name == retraction.submitter))
            )
        if not principal.allows("admin"):
            if retraction.submitter is not None and retraction.submitter != principal.name:
                raise ServiceError(403, "forbidden", "a submit token may retract only its own pairs")
            condition.append(pairs.c.submitted_by == principal.token_id)
        with writing(engine) as connection:
            result = connection.execute(
                update(pairs)
                .where(*condition)
                .values(retracted_at=time.time(), retracted_by=principal.token_id)
            )
        return {"dataset": name, "retracted": result.rowcount}

    @app.post("/v1/datasets/{name}/restorations", tags=["pairs"])
    def restore(name: str, restoration: Restoration, _: Principal = require("admin")) -> dict:
        """Bring retracted pairs back by id (admin only): snapshots from the next one on include them again
        (earlier snapshots never change), and their content counts as a `duplicate` again. Ids that are not
        retracted or not in this dataset are left alone; `restored` counts the pairs brought back."""
        ident = dataset_id(name)
        check_ids(restoration.ids)
        with writing(engine) as connection:
            result = connection.execute(
                update(pairs)
                .where(
                    pairs.c.dataset_id == ident,
                    pairs.c.retracted_at.is_not(None),
                    pairs.c.id.in_(restoration.ids),
                )
                .values(retracted_at=None, retracted_by=None)
            )
        return {"dataset": name, "restored": result.rowcount}

    @app.post("/v1/datasets/{name}/snapshots", tags=["snapshots"], status_code=201)
    def create_snapshot(name: str, principal: Principal = require("admin")) -> Any:
        """Freeze the accepted, unretracted pairs into an immutable version (same content -> same version)."""
        record, created = snapshots.create_snapshot(
            engine, config.snapshot_dir, dataset_id(name), name, principal.token_id, config.tracking,
            config.wandb_project,
        )  # fmt: skip
        return JSONResponse({**record, "created": created}, status_code=201 if created else 200)

    @app.get("/v1/datasets/{name}/snapshots", tags=["snapshots"])
    def list_snapshots(name: str, _: Principal = require("read")) -> list[dict]:
        return snapshots.list_snapshots(engine, dataset_id(name))

    @app.get("/v1/datasets/{name}/snapshots/{version}", tags=["snapshots"])
    def get_snapshot(name: str, version: str, _: Principal = require("read")) -> dict:
        found = snapshots.get_snapshot(engine, dataset_id(name), version)
        if found is None:
            raise ServiceError(404, "unknown_snapshot", f"dataset {name!r} has no snapshot {version!r}")
        return found

    # ---------------------------------------------------------------------------------------------- rounds
    @app.post("/v1/rounds", tags=["rounds"], status_code=201)
    def post_round(request: RoundRequest, principal: Any = require("admin")) -> Any:
        """Queue a round: snapshot -> reward model -> policy (DPO or PPO) -> evaluation, run by `alignment worker`."""
        ident = dataset_id(request.dataset)
        stage = request.policy_stage or config.rounds.policy_stage
        if stage not in ("dpo", "ppo"):
            raise ServiceError(422, "invalid_request", f"policy_stage must be dpo or ppo, got {stage!r}")
        if request.snapshot and snapshots.get_snapshot(engine, ident, request.snapshot) is None:
            raise ServiceError(
                404, "unknown_snapshot", f"dataset {request.dataset!r} has no snapshot {request.snapshot!r}"
            )
        round_id = rounds.create_round(engine, ident, stage, f"api:{principal.name}", request.snapshot)
        return JSONResponse(rounds.get_round(engine, round_id), status_code=201)

    @app.post("/v1/rounds/{round_id}/retry", tags=["rounds"])
    def retry(round_id: int, _: Any = require("admin")) -> dict:
        """Queue a failed round again: it keeps its snapshot and output directory, so finished stages are kept."""
        found = rounds.get_round(engine, round_id)
        if found is None:
            raise ServiceError(404, "unknown_round", f"no round {round_id}")
        with writing(engine) as connection:
            changed = connection.execute(
                update(rounds_table)
                .where(rounds_table.c.id == round_id, rounds_table.c.status == "failed")
                .values(status="queued", stage="queued", error=None, worker=None, updated_at=time.time())
            ).rowcount
        if not changed:
            raise ServiceError(
                409, "not_failed", f"round {round_id} is {found['status']}; only a failed round is retried"
            )
        return rounds.get_round(engine, round_id)

    @app.get("/v1/rounds", tags=["rounds"])
    def get_rounds(dataset: str | None = None, _: Any = require("read")) -> list[dict]:
        return rounds.list_rounds(engine, dataset_id(dataset) if dataset else None)

    @app.get("/v1/rounds/{round_id}", tags=["rounds"])
    def get_one(round_id: int, _: Any = require("read")) -> dict:
        found = rounds.get_round(engine, round_id)
        if found is None:
            raise ServiceError(404, "unknown_round", f"no round {round_id}")
        return found

    return app


def _parse_batch(body: bytes, max_pairs: int) -> list[Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ServiceError(400, "invalid_utf8", f"the body is not valid UTF-8 (byte {error.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ServiceError(
            400,
            "malformed_json",
            f"the body is not JSON: {error.msg} at line {error.lineno} column {error.colno}",
        ) from None
    except RecursionError:  # only with a limits.max_json_depth above the interpreter's recursion limit
        raise ServiceError(
            400, "json_too_deep", "the body nests arrays/objects too deep to parse; send flatter JSON"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("pairs"), list):
        raise ServiceError(422, "invalid_request", 'the body must be an object {"pairs": [ {...}, ... ]}')
    extra = sorted(set(data) - {"pairs"})
    if extra:
        raise ServiceError(422, "invalid_request", f"unknown top-level field(s) {', '.join(extra)}")
    if len(data["pairs"]) > max_pairs:
        raise ServiceError(
            413,
            "batch_too_large",
            f"{len(data['pairs'])} pairs > limit {max_pairs}; split the batch",
            limit=max_pairs,
        )
    if not data["pairs"]:
        raise ServiceError(422, "invalid_request", "`pairs` is empty")
    return data["pairs"]
