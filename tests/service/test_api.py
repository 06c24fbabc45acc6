"""The HTTP API on a real server (loopback, httpx), on SQLite and on PostgreSQL: auth, per-row results, dedup,
idempotency, limits, bad inputs, retraction, snapshots and reading them as a stage's data source."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.service.helpers import ServerProcess, pair

CONVERSATIONAL = {
    "prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"}],
    "chosen": [{"role": "assistant", "content": "4"}],
    "rejected": [{"role": "assistant", "content": "5"}],
    "metadata": {"annotator": "ann-1", "source": "judge", "margin": 2.5, "tags": ["math"]},
}


def test_health_and_openapi_docs_are_served(server: ServerProcess) -> None:
    with server.client(None) as anonymous:
        assert anonymous.get("/v1/health").json()["schema"] == "0001"
        paths = anonymous.get("/openapi.json").json()["paths"]
        assert "/v1/datasets/{name}/pairs" in paths and "/v1/rounds/{round_id}" in paths
        assert "swagger" in anonymous.get("/docs").text.lower()


def test_auth_missing_invalid_wrong_scope_and_revoked(server: ServerProcess) -> None:
    name = server.dataset("auth")
    body = {"pairs": [pair(0)]}
    with server.client(None) as anonymous:
        missing = anonymous.post(f"/v1/datasets/{name}/pairs", json=body)
        assert missing.status_code == 401 and missing.json()["error"] == "unauthenticated"
        assert missing.headers["WWW-Authenticate"] == "Bearer"
        bad = anonymous.post(
            f"/v1/datasets/{name}/pairs", json=body, headers={"Authorization": "Bearer alg_nope"}
        )
        assert bad.status_code == 401 and bad.json()["error"] == "invalid_token"
    with server.client("read") as reader:
        assert reader.get(f"/v1/datasets/{name}").status_code == 200
        forbidden = reader.post(f"/v1/datasets/{name}/pairs", json=body)
        assert forbidden.status_code == 403 and "'submit'" in forbidden.json()["detail"]
    with server.client("submit") as submitter:
        assert submitter.post(f"/v1/datasets/{name}/snapshots").status_code == 403
        assert submitter.put("/v1/datasets/other").status_code == 403
    from alignment.service.auth import create_token, revoke_token
    from alignment.service.store import make_engine

    engine = make_engine(server.db_url)
    doomed = create_token(engine, "doomed", "submit")
    headers = {"Authorization": f"Bearer {doomed}"}
    with server.client(None) as anonymous:
        assert anonymous.post(f"/v1/datasets/{name}/pairs", json=body, headers=headers).status_code == 200
        assert revoke_token(engine, name="doomed") == 1
        assert anonymous.post(f"/v1/datasets/{name}/pairs", json=body, headers=headers).status_code == 401
    engine.dispose()


def test_each_row_gets_its_result_and_duplicates_are_found_after_normalisation(server: ServerProcess) -> None:
    name = server.dataset("rows")
    rows = [
        pair(1),
        CONVERSATIONAL,
        {"prompt": " question  1? ", "chosen": "a helpful\tanswer 1", "rejected": "a poor answer 1 "},
        {"prompt": "p", "chosen": "same", "rejected": " same "},
        {"prompt": "p", "chosen": "x"},
        {"prompt": "p", "chosen": 3, "rejected": "y"},
        {**pair(2), "metadata": {"margin": "high"}},
        {**pair(3), "comment": "?"},
        {"prompt": [{"role": "assistant", "content": "hi"}], "chosen": "a", "rejected": "b"},
        "not an object",
    ]
    with server.client("submit") as client:
        response = client.post(f"/v1/datasets/{name}/pairs", json={"pairs": rows})
        assert response.status_code == 200, response.text
        body = response.json()
        statuses = [(r["status"], r.get("reason")) for r in body["results"]]
        assert statuses == [
            ("accepted", None),
            ("accepted", None),
            ("duplicate", None),
            ("rejected", "identical_pair"),
            ("rejected", "missing_field"),
            ("rejected", "wrong_type"),
            ("rejected", "bad_metadata"),
            ("rejected", "unknown_field"),
            ("rejected", "bad_role_order"),
            ("rejected", "wrong_type"),
        ]
        assert (body["accepted"], body["duplicate"], body["rejected"]) == (2, 1, 7)
        assert body["results"][2]["id"] == body["results"][0]["id"]
        assert "metadata.margin" in body["results"][6]["detail"]
        again = client.post(f"/v1/datasets/{name}/pairs", json={"pairs": [CONVERSATIONAL, pair(4)]}).json()
        assert [r["status"] for r in again["results"]] == ["duplicate", "accepted"]
        assert again["results"][0]["detail"] == "already stored"
        assert client.get(f"/v1/datasets/{name}").json()["accepted"] == 3


def test_idempotency_key_replays_the_first_response_and_refuses_another_body(server: ServerProcess) -> None:
    name = server.dataset("idem")
    body = {"pairs": [pair(i, "idem") for i in range(5)]}
    with server.client("submit") as client:
        first = client.post(f"/v1/datasets/{name}/pairs", json=body, headers={"Idempotency-Key": "batch-1"})
        replay = client.post(f"/v1/datasets/{name}/pairs", json=body, headers={"Idempotency-Key": "batch-1"})
        assert first.status_code == replay.status_code == 200
        assert replay.json() == first.json() and first.json()["accepted"] == 5
        assert replay.headers.get("Idempotent-Replay") == "true"
        other = {"pairs": [pair(99, "idem")]}
        conflict = client.post(
            f"/v1/datasets/{name}/pairs", json=other, headers={"Idempotency-Key": "batch-1"}
        )
        assert conflict.status_code == 422 and conflict.json()["error"] == "idempotency_key_reused"
        assert client.get(f"/v1/datasets/{name}").json()["accepted"] == 5  # nothing stored twice, nothing new


def test_bad_requests_get_their_status_and_message(server: ServerProcess) -> None:
    name = server.dataset("bad")
    url = f"/v1/datasets/{name}/pairs"
    json_headers = {"Content-Type": "application/json"}
    with server.client("submit") as client:
        malformed = client.post(url, content=b'{"pairs": [', headers=json_headers)
        assert malformed.status_code == 400 and malformed.json()["error"] == "malformed_json"
        assert "line 1" in malformed.json()["detail"]
        latin1 = client.post(url, content='{"pairs": [{"prompt": "caf\xe9"}]}'.encode("latin-1"))
        assert latin1.status_code == 400 and latin1.json()["error"] == "invalid_utf8"
        surrogate = client.post(
            url,
            content=b'{"pairs": [{"prompt": "x\\ud800", "chosen": "a", "rejected": "b"}]}',
            headers=json_headers,
        )
        assert surrogate.status_code == 200 and surrogate.json()["results"][0]["reason"] == "invalid_text"
        nul = client.post(
            url, json={"pairs": [{"prompt": "nul \x00 inside", "chosen": "a", "rejected": "b"}]}
        )
        assert nul.status_code == 200 and nul.json()["accepted"] == 1  # stored escaped, on both backends
        for wrong in ([pair(0)], {"pairs": "x"}, {"rows": []}, {"pairs": []}, {"pairs": [pair(0)], "x": 1}):
            response = client.post(url, json=wrong)
            assert response.status_code == 422 and response.json()["error"] == "invalid_request", wrong
        unknown = client.post("/v1/datasets/nope/pairs", json={"pairs": [pair(0)]})
        assert unknown.status_code == 404 and "PUT /v1/datasets/nope" in unknown.json()["detail"]
        too_many = client.post(url, json={"pairs": [pair(i) for i in range(101)]})
        assert too_many.status_code == 413 and too_many.json() == {
            "error": "batch_too_large",
            "detail": "101 pairs > limit 100; split the batch",
            "limit": 100,
        }
        huge = client.post(url, json={"pairs": [{**pair(0), "chosen": "x" * 250_000}]})
        assert huge.status_code == 413 and huge.json()["limit"] == 200_000
        for number in ("NaN", "Infinity", "-Infinity"):  # Python's JSON parser takes these extensions
            body = '{"pairs": [{"prompt": "p", "chosen": "a", "rejected": "b", "metadata": {"margin": %s}}]}'
            non_finite = client.post(url, content=(body % number).encode(), headers=json_headers)
            result = non_finite.json()["results"][0]
            assert non_finite.status_code == 200 and result["reason"] == "non_finite_metadata", number
            assert "metadata.margin" in result["detail"]
        assert client.get(f"/v1/datasets/{name}").json()["accepted"] == 1
    with server.client("admin") as admin:
        assert admin.put("/v1/datasets/bad name!").status_code == 422
        trailing_newline = admin.put("/v1/datasets/name%0A")  # `re.match` with `$` let it through
        assert trailing_newline.status_code == 422 and trailing_newline.json()["error"] == "bad_name"
        assert admin.get("/v1/rounds/999999").status_code == 404


def test_retraction_and_immutable_snapshots_read_as_a_stage_source(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = server.dataset("snap")
    with server.client("submit") as submitter, server.client("admin") as admin:
        mine = submitter.post(
            f"/v1/datasets/{name}/pairs", json={"pairs": [pair(i, "s") for i in range(4)]}
        ).json()
        theirs = admin.post(f"/v1/datasets/{name}/pairs", json={"pairs": [CONVERSATIONAL]}).json()
        ids = [r["id"] for r in mine["results"]]
        first = admin.post(f"/v1/datasets/{name}/snapshots")
        assert first.status_code == 201 and first.json()["pairs"] == 5
        v1 = first.json()
        v1_file = Path(v1["path"]) / "pairs.jsonl"
        v1_bytes = v1_file.read_bytes()
        assert hashlib.sha256(v1_bytes).hexdigest()[:16] == v1["version"]
        same = admin.post(f"/v1/datasets/{name}/snapshots")
        assert (
            same.status_code == 200 and same.json()["version"] == v1["version"] and not same.json()["created"]
        )

        # A submit token retracts only its own pairs; an admin token anyone's.
        other = submitter.post(f"/v1/datasets/{name}/retractions", json={"ids": [theirs["results"][0]["id"]]})
        assert other.json()["retracted"] == 0
        assert (
            submitter.post(f"/v1/datasets/{name}/retractions", json={"submitter": "test-admin"}).status_code
            == 403
        )
        assert (
            submitter.post(f"/v1/datasets/{name}/retractions", json={"ids": ids[:1]}).json()["retracted"] == 1
        )
        v2 = admin.post(f"/v1/datasets/{name}/snapshots").json()
        assert v2["pairs"] == 4 and v2["version"] != v1["version"]
        assert (
            admin.post(f"/v1/datasets/{name}/retractions", json={"submitter": "test-submit"}).json()[
                "retracted"
            ]
            == 3
        )
        v3 = admin.post(f"/v1/datasets/{name}/snapshots").json()
        assert v3["pairs"] == 1
        assert v1_file.read_bytes() == v1_bytes  # earlier snapshots never change
        listed = admin.get(f"/v1/datasets/{name}/snapshots").json()
        assert [s["pairs"] for s in listed] == [5, 4, 1]
        assert admin.get(f"/v1/datasets/{name}/snapshots/{v2['version']}").json()["pairs"] == 4
        assert admin.get(f"/v1/datasets/{name}").json()["retracted"] == 4
        # Retracted content stays out: submitting it again is rejected as `retracted`, not stored as a new pair.
        again = submitter.post(f"/v1/datasets/{name}/pairs", json={"pairs": [pair(0, "s")]}).json()
        assert again["results"][0]["status"] == "rejected" and again["results"][0]["reason"] == "retracted"

    from alignment.data import DataConfig, load

    monkeypatch.setenv("ALIGNMENT_SERVICE_SNAPSHOTS", str(server.snapshot_dir))
    result = load(DataConfig(source=v1["source"]), "preference")
    assert len(result.rows) == 5 and not result.rejects
    conversational = [row for row in result.rows if row.get("margin") == 2.5]
    assert conversational and conversational[0]["prompt"][0] == {"role": "system", "content": "be brief"}
    assert conversational[0]["source"] == "judge"
    v3_rows = load(DataConfig(source=v3["source"]), "preference").rows
    assert [row["chosen"] for row in v3_rows] == [[{"role": "assistant", "content": "4"}]]


def test_a_snapshot_file_altered_after_export_is_refused(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = server.dataset("tamper")
    with server.client("admin") as admin:
        admin.post(f"/v1/datasets/{name}/pairs", json={"pairs": [pair(1, "t")]})
        snapshot = admin.post(f"/v1/datasets/{name}/snapshots").json()
    from alignment.data import DataConfig, DataError, load

    monkeypatch.setenv("ALIGNMENT_SERVICE_SNAPSHOTS", str(server.snapshot_dir))
    path = Path(snapshot["path"]) / "pairs.jsonl"
    path.write_text(path.read_text().replace("helpful", "harmful"))
    with pytest.raises(DataError, match="altered"):
        load(DataConfig(source=snapshot["source"]), "preference")
    with pytest.raises(DataError, match="not found"):
        load(DataConfig(source=f"service:{name}@0000000000000000"), "preference")


def test_per_token_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    server = ServerProcess(
        f"sqlite:///{tmp_path / 'rate.db'}",
        tmp_path,
        limits={"requests_per_second": 0.5, "burst": 3, "max_batch_pairs": 10, "max_body_bytes": 10_000},
    )
    server.start()
    try:
        server.dataset("rate")
        with server.client("submit") as client, server.client("read") as reader:
            codes = [client.get("/v1/datasets/rate").status_code for _ in range(4)]
            assert codes == [200, 200, 200, 429]
            limited = client.get("/v1/datasets/rate")
            assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
            assert limited.json()["error"] == "rate_limited"
            assert reader.get("/v1/datasets/rate").status_code == 200  # the limit is per token
    finally:
        server.stop()


def test_a_storage_failure_answers_500_in_json_and_the_server_goes_on(server: ServerProcess) -> None:
    from sqlalchemy import text

    from alignment.service.store import make_engine, writing

    name = server.dataset("broken")
    engine = make_engine(server.db_url)
    with writing(engine) as connection:
        connection.execute(text("ALTER TABLE snapshot_pairs RENAME TO snapshot_pairs_away"))
    try:
        with server.client("admin") as admin:
            admin.post(f"/v1/datasets/{name}/pairs", json={"pairs": [pair(1, "broken")]})
            failed = admin.post(f"/v1/datasets/{name}/snapshots")
            assert failed.status_code == 500 and failed.json()["error"] == "internal"
            assert "retry" in failed.json()["detail"]
    finally:
        with writing(engine) as connection:
            connection.execute(text("ALTER TABLE snapshot_pairs_away RENAME TO snapshot_pairs"))
        engine.dispose()
    with server.client("admin") as admin:
        retried = admin.post(f"/v1/datasets/{name}/snapshots")
        assert retried.status_code in (200, 201) and retried.json()["pairs"] == 1
