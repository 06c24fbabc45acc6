"""Dedup and retraction semantics on a real server, on SQLite and PostgreSQL: what a `duplicate` reveals to whom,
retracted content staying out (reason `retracted`) until an admin restores it, and snapshots after a restore."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.service.helpers import ServerProcess, pair


def _other_submitter(server: ServerProcess, name: str) -> httpx.Client:
    from alignment.service.auth import create_token
    from alignment.service.store import make_engine

    engine = make_engine(server.db_url)
    token = create_token(engine, name, "submit")
    engine.dispose()
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def test_a_duplicate_shows_the_stored_id_only_to_its_submitter_and_to_admins(server: ServerProcess) -> None:
    name = server.dataset("dedup-owner")
    url = f"/v1/datasets/{name}/pairs"
    with (
        _other_submitter(server, "test-other-dedup") as other,
        server.client("submit") as submitter,
        server.client("admin") as admin,
    ):
        theirs = other.post(url, json={"pairs": [pair(1, "o")]}).json()["results"][0]
        assert theirs["status"] == "accepted"
        mine = submitter.post(url, json={"pairs": [pair(1, "o"), pair(2, "o"), pair(2, "o")]}).json()
        assert (mine["accepted"], mine["duplicate"], mine["rejected"]) == (1, 2, 0)
        first, accepted, repeated = mine["results"]
        # Another submitter's pair: a duplicate, but not whose nor which id.
        assert first == {"index": 0, "status": "duplicate", "detail": "already stored by another submitter"}
        # Its own pairs: the id, earlier in the batch or stored before.
        assert repeated == {
            "index": 2,
            "status": "duplicate",
            "id": accepted["id"],
            "detail": "earlier in this batch",
        }
        again = submitter.post(url, json={"pairs": [pair(2, "o")]}).json()["results"][0]
        assert again == {"index": 0, "status": "duplicate", "detail": "already stored", "id": accepted["id"]}
        # An admin sees every stored id.
        seen = admin.post(url, json={"pairs": [pair(1, "o"), pair(2, "o")]}).json()["results"]
        assert [(r["status"], r["id"]) for r in seen] == [
            ("duplicate", theirs["id"]),
            ("duplicate", accepted["id"]),
        ]


def test_retracted_content_stays_out_until_an_admin_restores_it(server: ServerProcess) -> None:
    name = server.dataset("restore")
    url = f"/v1/datasets/{name}/pairs"
    with (
        _other_submitter(server, "test-other-restore") as other,
        server.client("submit") as submitter,
        server.client("admin") as admin,
    ):
        ids = [
            r["id"]
            for r in submitter.post(url, json={"pairs": [pair(i, "r") for i in range(3)]}).json()["results"]
        ]
        v1 = admin.post(f"/v1/datasets/{name}/snapshots").json()
        assert v1["pairs"] == 3
        assert (
            submitter.post(f"/v1/datasets/{name}/retractions", json={"ids": [ids[0]]}).json()["retracted"]
            == 1
        )
        v2 = admin.post(f"/v1/datasets/{name}/snapshots").json()
        assert v2["pairs"] == 2

        # Submitting retracted content again is rejected (never stored anew, never a mere duplicate), with the id
        # for its own submitter and for admins only.
        again = submitter.post(url, json={"pairs": [pair(0, "r")]}).json()
        assert (again["accepted"], again["duplicate"], again["rejected"]) == (0, 0, 1)
        result = again["results"][0]
        assert (result["status"], result["reason"], result["id"]) == ("rejected", "retracted", ids[0])
        assert f"POST /v1/datasets/{name}/restorations" in result["detail"]
        by_admin = admin.post(url, json={"pairs": [pair(0, "r")]}).json()["results"][0]
        assert (by_admin["reason"], by_admin["id"]) == ("retracted", ids[0])
        by_other = other.post(url, json={"pairs": [pair(0, "r")]}).json()["results"][0]
        assert by_other["reason"] == "retracted" and "id" not in by_other
        counts = admin.get(f"/v1/datasets/{name}").json()
        assert (counts["accepted"], counts["retracted"]) == (2, 1)

        # Only an admin restores; ids not retracted, or unknown, are left alone.
        restorations = f"/v1/datasets/{name}/restorations"
        refused = submitter.post(restorations, json={"ids": [ids[0]]})
        assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
        restored = admin.post(restorations, json={"ids": [ids[0], ids[1], 10**9]})
        assert restored.status_code == 200 and restored.json() == {"dataset": name, "restored": 1}
        assert admin.post(restorations, json={"ids": [ids[0]]}).json()["restored"] == 0
        assert admin.post("/v1/datasets/nope/restorations", json={"ids": [ids[0]]}).status_code == 404
        counts = admin.get(f"/v1/datasets/{name}").json()
        assert (counts["accepted"], counts["retracted"]) == (3, 0)
        restored_again = submitter.post(url, json={"pairs": [pair(0, "r")]}).json()["results"][0]
        assert (restored_again["status"], restored_again["id"]) == ("duplicate", ids[0])

        # Snapshots include it again from the next one on (here v1's content again, hence v1's version); earlier
        # snapshots never change.
        v3 = admin.post(f"/v1/datasets/{name}/snapshots")
        assert v3.status_code == 200 and v3.json()["version"] == v1["version"] and v3.json()["pairs"] == 3
        submitter.post(url, json={"pairs": [pair(3, "r")]})
        v4 = admin.post(f"/v1/datasets/{name}/snapshots")
        assert v4.status_code == 201 and v4.json()["pairs"] == 4

    def snapshot_ids(record: dict) -> list[str]:
        lines = (Path(record["path"]) / "pairs.jsonl").read_text().splitlines()
        return [json.loads(line)["id"] for line in lines]

    assert f"{name}-{ids[0]}" in snapshot_ids(v4.json())
    assert f"{name}-{ids[0]}" not in snapshot_ids(v2)
