"""Request limits on a real server (loopback): every body bounded in size and JSON nesting before any route parses
or authenticates it, the ids of a retraction or restoration capped, failed authentications limited per address."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.helpers import ServerProcess, pair

BODY_LIMIT = 200_000  # bench/servers.py's ServerProcess: limits.max_body_bytes
ROUTES = (
    ("POST", "/v1/datasets/guarded/retractions"),
    ("POST", "/v1/rounds"),
    ("POST", "/v1/datasets/guarded/pairs"),
    ("PUT", "/v1/datasets/guarded"),
    ("GET", "/v1/health"),
)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("limits")
    server = ServerProcess(f"sqlite:///{tmp / 'store.db'}", tmp)
    server.start()
    try:
        server.dataset("guarded")
        yield server
    finally:
        server.stop()


def _send_head(server: ServerProcess, method: str, path: str, headers: dict[str, str]) -> socket.socket:
    """An unauthenticated request's head only, on a raw socket (no body follows unless the test sends it)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines += [f"{key}: {value}" for key, value in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def _answer(sock: socket.socket) -> tuple[int, dict]:
    """The response's status and JSON body (a socket timeout, 10 s, means the server waited for the body)."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, json.loads(response.read())


def test_an_announced_oversized_body_gets_413_at_once_on_every_route_before_auth(
    guarded: ServerProcess,
) -> None:
    for method, path in ROUTES:
        started = time.monotonic()
        with _send_head(guarded, method, path, {"Content-Length": str(64 * 1024 * 1024)}) as sock:
            status, body = _answer(sock)  # only the head was sent: the server must not wait for the 64 MiB
        assert time.monotonic() - started < 5, path
        assert status == 413, (path, body)
        assert body["error"] == "body_too_large" and body["limit"] == BODY_LIMIT, path
        assert "limits.max_body_bytes" in body["detail"] and "split" in body["detail"], path


def test_a_chunked_body_is_refused_as_soon_as_its_count_passes_the_limit(guarded: ServerProcess) -> None:
    for method, path in ROUTES[:3]:
        with _send_head(guarded, method, path, {"Transfer-Encoding": "chunked"}) as sock:
            for size in (65536, 65536, 65536, BODY_LIMIT + 1 - 3 * 65536):  # one byte over, no final chunk
                sock.sendall(b"%x\r\n%s\r\n" % (size, b" " * size))
            status, body = _answer(sock)
        assert status == 413 and body["error"] == "body_too_large" and body["limit"] == BODY_LIMIT, path
    # A chunked body within the limit still goes through.
    with guarded.client("submit") as submitter:
        chunks = iter([b'{"pairs": [', json.dumps(pair(1, "chunked")).encode(), b"]}"])
        response = submitter.post(
            "/v1/datasets/guarded/pairs", content=chunks, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 200 and response.json()["accepted"] == 1, response.text


def _nested_extra(levels: int) -> str:
    """A pair whose metadata.extra nests `levels` objects: the body is 4 + `levels` deep."""
    extra = '{"a": ' * (levels - 1) + "{}" + "}" * (levels - 1)
    return (
        '{"pairs": [{"prompt": "p", "chosen": "a", "rejected": "b", "metadata": {"extra": ' + extra + "}}]}"
    )


def test_deeply_nested_json_is_a_400_naming_the_limit_on_every_route(guarded: ServerProcess) -> None:
    url = "/v1/datasets/guarded/pairs"
    json_headers = {"Content-Type": "application/json"}
    with guarded.client("submit") as submitter, guarded.client(None) as anonymous:
        at_limit = submitter.post(url, content=_nested_extra(28).encode(), headers=json_headers)
        assert at_limit.status_code == 200 and at_limit.json()["accepted"] == 1, at_limit.text
        over = submitter.post(url, content=_nested_extra(29).encode(), headers=json_headers)
        assert over.status_code == 400 and over.json() == {
            "error": "json_too_deep",
            "detail": "the body nests arrays/objects 33 deep, over limits.max_json_depth = 32; send flatter JSON",
            "limit": 32,
        }
        # Deep enough to overflow the parser's recursion (a 500, retried 8 times by `alignment submit`).
        bottomless = "[" * 50_000 + "]" * 50_000
        cases = [
            (
                submitter,
                url,
                '{"pairs": [{"prompt": "p", "metadata": {"extra": {"a": ' + bottomless + "}}}]}",
            ),
            (anonymous, "/v1/datasets/guarded/retractions", '{"ids": ' + bottomless + "}"),
            (anonymous, "/v1/rounds", '{"dataset": ' + bottomless + "}"),
            (submitter, "/v1/datasets/guarded/retractions", '{"ids": ' + bottomless + "}"),
        ]
        for client, path, body in cases:
            response = client.post(path, content=body.encode(), headers=json_headers)
            assert response.status_code == 400, (path, response.text)
            assert response.json()["error"] == "json_too_deep" and response.json()["limit"] == 32, path
        # Brackets inside strings are text, not nesting.
        text = submitter.post(url, json={"pairs": [pair(2, "[[[[" * 100)]})
        assert text.status_code == 200 and text.json()["accepted"] == 1, text.text


def test_a_retraction_or_restoration_names_at_most_max_retraction_ids(guarded: ServerProcess) -> None:
    from alignment.service.settings import LimitsConfig

    limit = LimitsConfig().max_retraction_ids
    too_many = {"ids": list(range(1, limit + 2))}
    with guarded.client("submit") as submitter, guarded.client("admin") as admin:
        refused = submitter.post("/v1/datasets/guarded/retractions", json=too_many)
        assert refused.status_code == 413 and refused.json() == {
            "error": "too_many_ids",
            "detail": f"{limit + 1} ids > limits.max_retraction_ids = {limit}; split them over several requests",
            "limit": limit,
        }
        restoring = admin.post("/v1/datasets/guarded/restorations", json=too_many)
        assert restoring.status_code == 413 and restoring.json()["error"] == "too_many_ids"
        within = submitter.post("/v1/datasets/guarded/retractions", json={"ids": too_many["ids"][:limit]})
        assert within.status_code == 200 and "retracted" in within.json()


def test_failed_authentications_per_address_are_limited_and_known_tokens_go_on(tmp_path: Path) -> None:
    limits = {"max_body_bytes": BODY_LIMIT, "requests_per_second": 0, "auth_failures_per_minute": 3}
    server = ServerProcess(f"sqlite:///{tmp_path / 'auth.db'}", tmp_path, limits=limits)
    server.start()
    try:
        server.dataset("guessed")  # the admin token authenticates from 127.0.0.1 before the guesses
        with server.client("submit") as submitter, server.client(None) as anonymous:
            assert submitter.get("/v1/datasets/guessed").status_code == 200
            guesses = [
                anonymous.get("/v1/datasets/guessed", headers={"Authorization": f"Bearer alg_guess{i}"})
                for i in range(5)
            ]
            assert [guess.status_code for guess in guesses] == [401, 401, 401, 429, 429]
            limited = guesses[3]
            assert limited.json()["error"] == "auth_rate_limited" and limited.json()["limit"] == 3
            assert "limits.auth_failures_per_minute" in limited.json()["detail"]
            assert 1 <= int(limited.headers["Retry-After"]) <= 60
            # Tokens that succeeded from this address before go on; a valid token new to it waits like a guess
            # (checking it would tell a guesser which guess is right); no token at all is still a plain 401.
            assert submitter.get("/v1/datasets/guessed").status_code == 200
            with server.client("admin") as admin:
                assert admin.post("/v1/datasets/guessed/pairs", json={"pairs": [pair(1)]}).status_code == 200
            with server.client("read") as reader:
                new_here = reader.get("/v1/datasets/guessed")
                assert new_here.status_code == 429 and new_here.json()["error"] == "auth_rate_limited"
            assert anonymous.get("/v1/datasets/guessed").json()["error"] == "unauthenticated"
    finally:
        server.stop()


def test_the_failed_authentication_window_slides() -> None:
    from alignment.service.auth import FailedAuthLimiter

    limiter = FailedAuthLimiter(2, window=0.3)
    limiter.succeeded("10.0.0.1", "known")
    for _ in range(2):
        assert limiter.wait("10.0.0.1", "guess") == 0
        limiter.failed("10.0.0.1")
    assert 0 < limiter.wait("10.0.0.1", "guess") <= 0.3
    assert limiter.wait("10.0.0.1", "known") == 0 and limiter.wait("10.0.0.2", "guess") == 0
    time.sleep(0.35)
    assert limiter.wait("10.0.0.1", "guess") == 0
    assert FailedAuthLimiter(0).wait("10.0.0.1", "guess") == 0  # 0 disables
