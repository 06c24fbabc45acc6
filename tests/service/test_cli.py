"""The command line against a real server: `alignment tokens` and `alignment submit` (summary, resume, errors)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.helpers import run_cli
from tests.service.helpers import ServerProcess, pair


def test_tokens_create_list_revoke_on_the_servers_store(server: ServerProcess, capsys) -> None:
    from alignment.cli import main

    server.dataset("tok")
    assert (
        main(["tokens", "create", "--scope", "submit", "--name", "annotator-7", "--db", server.db_url]) == 0
    )
    created = capsys.readouterr()
    token = created.out.strip()
    assert token.startswith("alg_") and "not shown again" in created.err
    headers = {"Authorization": f"Bearer {token}"}
    body = {"pairs": [pair(1, "cli")]}
    assert httpx.post(f"{server.url}/v1/datasets/tok/pairs", json=body, headers=headers).status_code == 200
    assert main(["tokens", "list", "--db", server.db_url]) == 0
    listed = capsys.readouterr().out
    assert "annotator-7" in listed and token not in listed
    assert main(["tokens", "revoke", "annotator-7", "--db", server.db_url]) == 0
    assert "revoked 1" in capsys.readouterr().out
    assert httpx.post(f"{server.url}/v1/datasets/tok/pairs", json=body, headers=headers).status_code == 401
    assert main(["tokens", "revoke", "annotator-7", "--db", server.db_url]) == 1  # nothing left to revoke


def _pairs_file(path: Path) -> Path:
    lines = [json.dumps(pair(i, "file")) for i in range(25)]
    lines.insert(5, json.dumps(pair(0, "file")))  # line 6: a duplicate of line 1
    lines.insert(12, '{"prompt": "broken", ')  # line 13: not JSON
    lines.append(json.dumps({"prompt": "p", "chosen": "same", "rejected": "same"}))  # line 28: identical
    path.write_text("\n".join(lines) + "\n")
    return path


def test_submit_prints_the_per_row_summary_and_resumes(server: ServerProcess, tmp_path: Path) -> None:
    name = server.dataset("submitted")
    source = _pairs_file(tmp_path / "pairs.jsonl")
    env = {"ALIGNMENT_HOME": str(tmp_path / "home"), "ALIGNMENT_TOKEN": server.tokens["submit"]}
    args = ("submit", str(source), "--dataset", name, "--url", server.url, "--batch-size", "10")
    first = run_cli(*args, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "25 accepted, 1 duplicate, 2 rejected (3/3 batches)" in first.stdout
    assert f"{source}:13: malformed_json" in first.stdout
    assert f"{source}:28: identical_pair" in first.stdout
    with server.client("read") as reader:
        assert reader.get(f"/v1/datasets/{name}").json()["accepted"] == 25

    # Interrupted after two batches: the progress file lacks the third; a re-run sends only that one, and
    # the server answers it from its idempotency record (the batch had in fact arrived): nothing twice.
    (progress_file,) = (tmp_path / "home" / "service" / "submit").glob("*.json")
    progress = json.loads(progress_file.read_text())
    del progress["batches"]["2"]
    progress_file.write_text(json.dumps(progress))
    resumed = run_cli(*args, env=env)
    assert resumed.returncode == 0 and "resuming: 2 of 3 batches" in resumed.stdout
    assert "25 accepted, 1 duplicate, 2 rejected (3/3 batches)" in resumed.stdout
    with server.client("read") as reader:
        assert reader.get(f"/v1/datasets/{name}").json()["accepted"] == 25


def test_submit_reports_a_refused_batch_and_how_to_go_on(server: ServerProcess, tmp_path: Path) -> None:
    source = _pairs_file(tmp_path / "pairs.jsonl")
    env = {"ALIGNMENT_HOME": str(tmp_path / "home")}
    wrong = run_cli(
        "submit",
        str(source),
        "--dataset",
        "nowhere",
        "--url",
        server.url,
        "--token",
        server.tokens["submit"],
        env=env,
    )
    assert wrong.returncode == 1
    assert "HTTP 404" in wrong.stdout and "PUT /v1/datasets/nowhere" in wrong.stdout
    assert "run the same command again" in wrong.stdout
    no_token = run_cli(
        "submit", str(source), "--dataset", "x", "--url", server.url, env={**env, "ALIGNMENT_TOKEN": ""}
    )
    assert no_token.returncode == 2 and "ALIGNMENT_TOKEN" in no_token.stderr
