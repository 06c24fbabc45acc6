"""Bearer tokens (stored as SHA-256 hashes, shown once), scopes, per-token rate limits and a limit on failed
authentications per client address.

A token is 32 random bytes (`secrets.token_urlsafe`) behind an `alg_` prefix, so the hash of a token cannot be
brute-forced and a plain SHA-256 is enough (no password hashing needed). Lookup is by hash; the stored hash is
compared again with `hmac.compare_digest`.

Scopes are nested: `read` lists and fetches; `submit` also posts pairs and retracts its own; `admin` also
creates datasets, snapshots and rounds, retracts anyone's pairs and restores retracted ones.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine

from alignment.service.store import tokens, writing

SCOPES = ("read", "submit", "admin")
TOKEN_PREFIX = "alg_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's row."""

    token_id: int
    name: str
    scope: str

    def allows(self, needed: str) -> bool:
        return SCOPES.index(self.scope) >= SCOPES.index(needed)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(engine: Engine, name: str, scope: str) -> str:
    """Store a new token's hash and return the token itself (the only time it exists in clear)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; use one of {', '.join(SCOPES)}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with writing(engine) as connection:
        connection.execute(
            insert(tokens).values(
                name=name, scope=scope, token_hash=hash_token(token), created_at=time.time()
            )
        )
    return token


def revoke_token(engine: Engine, name: str | None = None, token_id: int | None = None) -> int:
    """Revoke by name (every token of that name) or id; returns how many were revoked."""
    if (name is None) == (token_id is None):
        raise ValueError("revoke by name or by id")
    condition = tokens.c.name == name if name is not None else tokens.c.id == token_id
    with writing(engine) as connection:
        result = connection.execute(
            update(tokens).where(condition, tokens.c.revoked_at.is_(None)).values(revoked_at=time.time())
        )
    return result.rowcount


def list_tokens(engine: Engine) -> list[dict]:
    with engine.connect() as connection:
        rows = connection.execute(select(tokens).order_by(tokens.c.id)).mappings().all()
    return [{k: v for k, v in row.items() if k != "token_hash"} for row in rows]


def authenticate(engine: Engine, token: str) -> Principal | None:
    """The principal of a valid, unrevoked token, or None."""
    digest = hash_token(token)
    with engine.connect() as connection:
        row = connection.execute(
            select(
                tokens.c.id, tokens.c.name, tokens.c.scope, tokens.c.token_hash, tokens.c.revoked_at
            ).where(tokens.c.token_hash == digest)
        ).first()
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.token_hash, digest):
        return None
    return Principal(row.id, row.name, row.scope)


class RateLimiter:
    """A token bucket per token id, in this server process: `rate` requests/s sustained, `burst` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._buckets: dict[int, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def acquire(self, key: int) -> float:
        """0 when the request may go ahead, else the seconds to wait before retrying."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            level, stamp = self._buckets.get(key, (float(self.burst), now))
            level = min(float(self.burst), level + (now - stamp) * self.rate)
            if level >= 1.0:
                self._buckets[key] = (level - 1.0, now)
                return 0.0
            self._buckets[key] = (level, now)
            return (1.0 - level) / self.rate


class FailedAuthLimiter:
    """Failed authentications per client address, in this server process (a sliding window of `window` s).

    After `limit` failures within the window, a token presented from that address is refused (`wait` > 0) without
    being looked up, until the oldest of those failures is `window` s old: a guesser gets `limit` guesses per
    window, whatever it sends. A token that already authenticated from the address is let through as usual, so the
    address's own clients go on working; a token new to the address waits like a guess. `limit` 0 disables."""

    def __init__(self, limit: int, window: float = 60.0, max_tracked: int = 10_000) -> None:
        self.limit, self.window, self.max_tracked = limit, window, max_tracked
        self._failures: dict[str, deque[float]] = {}  # address -> times of its last `limit` failures
        self._succeeded: OrderedDict[tuple[str, str], None] = OrderedDict()  # (address, token hash), LRU
        self._lock = threading.Lock()

    def wait(self, address: str, token_hash: str) -> float:
        """0 when this token may be checked now, else the seconds until the address may try again."""
        if self.limit <= 0:
            return 0.0
        with self._lock:
            failures = self._failures.get(address)
            if failures is None or len(failures) < self.limit:
                return 0.0
            wait = failures[0] + self.window - time.monotonic()
            if wait <= 0 or (address, token_hash) in self._succeeded:
                return 0.0
            return wait

    def failed(self, address: str) -> None:
        if self.limit <= 0:
            return
        now = time.monotonic()
        with self._lock:
            if address not in self._failures and len(self._failures) >= self.max_tracked:
                expired = [a for a, times in self._failures.items() if times[-1] + self.window <= now]
                for stale in expired or [next(iter(self._failures))]:
                    del self._failures[stale]
            self._failures.setdefault(address, deque(maxlen=self.limit)).append(now)

    def succeeded(self, address: str, token_hash: str) -> None:
        if self.limit <= 0:
            return
        key = (address, token_hash)
        with self._lock:
            self._succeeded[key] = None
            self._succeeded.move_to_end(key)
            if len(self._succeeded) > self.max_tracked:
                self._succeeded.popitem(last=False)


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
