"""A whole alignment round on the tiny model through the local executor, with its worker killed mid-round:
pairs over HTTP -> round -> snapshot -> reward model -> DPO -> metrics and lineage, resumed by a second worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.helpers import REPO, run_cli, write_config
from tests.service.helpers import ServerProcess

pytestmark = pytest.mark.integration


def _conversational_pairs(count: int) -> list[dict]:
    return [
        {
            "prompt": [{"role": "user", "content": f"What is {i} plus {i + 1}?"}],
            "chosen": [{"role": "assistant", "content": f"{i} plus {i + 1} is {2 * i + 1}."}],
            "rejected": [{"role": "assistant", "content": f"It is {3 * i + 7}, I think."}],
            "metadata": {"annotator": "gold", "margin": 1.0},
        }
        for i in range(count)
    ]


def _wait_for(predicate, timeout: float, what: str):  # noqa: ANN001, ANN202
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_a_round_runs_end_to_end_and_survives_its_worker_being_killed(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    small = {"max_steps": 2, "save_steps": 1}
    base = write_config(
        tmp_path,
        sft__max_steps=2,
        sft__save_steps=2,
        reward__max_steps=small["max_steps"],
        reward__save_steps=small["save_steps"],
        reward__normalization_samples=8,
        dpo__max_steps=small["max_steps"],
        dpo__save_steps=small["save_steps"],
    )
    sft = run_cli("stage", "sft", "--config", str(base), timeout=600)
    assert sft.returncode == 0, sft.stderr[-3000:]
    sft_artifact = tmp_path / "run" / "sft"

    server = ServerProcess(
        f"sqlite:///{tmp_path / 'service.db'}",
        tmp_path,
        rounds={
            "pipeline": str(base),
            "sft": str(sft_artifact),
            "output_dir": str(tmp_path / "rounds"),
            "lease_seconds": 4,
        },
    )
    server.start()
    try:
        name = server.dataset("math")
        with server.client("submit") as client:
            assert (
                client.post(f"/v1/datasets/{name}/pairs", json={"pairs": _conversational_pairs(40)}).json()[
                    "accepted"
                ]
                == 40
            )
        with server.client("admin") as admin:
            round_id = admin.post("/v1/rounds", json={"dataset": name}).json()["id"]

        def get_round() -> dict:
            return httpx.get(
                f"{server.url}/v1/rounds/{round_id}",
                headers={"Authorization": f"Bearer {server.tokens['read']}"},
            ).json()

        worker_command = [
            sys.executable,
            "-m",
            "alignment.cli",
            "worker",
            "--config",
            str(server.config_path),
            "--once",
        ]
        env = {**os.environ, "ALIGNMENT_SERVICE_SNAPSHOTS": str(server.snapshot_dir)}
        with open(tmp_path / "worker1.log", "w") as log:
            first = subprocess.Popen(worker_command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
            started = _wait_for(
                lambda: (r := get_round())["executor_job"] and r, 180, "the pipeline to start"
            )
            time.sleep(3)
            os.kill(first.pid, signal.SIGKILL)  # the worker dies mid-round; its pipeline is left running
            first.wait()
        assert started["stage"] == "train" and started["snapshot"] and started["attempts"] == 1
        orphan = int(started["executor_job"].split(":")[-1])
        assert get_round()["status"] == "running"

        _wait_for(
            lambda: get_round()["lease_expires_at"] < time.time(), 30, "the dead worker's lease to lapse"
        )
        second = subprocess.run(
            worker_command, cwd=REPO, capture_output=True, text=True, timeout=900, env=env, check=False
        )
        done = get_round()
        assert second.returncode == 0, (second.stdout[-2000:], done.get("error"))
        with pytest.raises(ProcessLookupError):
            os.killpg(orphan, 0)  # the dead worker's pipeline was stopped, not left to race the resumed one
    finally:
        server.stop()

    assert (done["status"], done["stage"], done["attempts"]) == ("succeeded", "done", 2)
    lineage = done["lineage"]
    assert lineage["snapshot"]["version"] == done["snapshot"] == started["snapshot"]
    assert lineage["reward"]["init_from"] == lineage["policy"]["init_from"] == str(sft_artifact)
    for link in ("reward", "policy"):
        manifest = json.loads((Path(lineage[link]["path"]) / "MANIFEST.json").read_text())
        assert manifest["data"]["train"] and lineage[link]["manifest_hash"]
    round_yaml = yaml.safe_load((Path(done["output_dir"]) / "round.yaml").read_text())
    assert round_yaml["dpo"]["data"]["source"] == f"service:{name}@{done['snapshot']}"
    _assert_rm_accuracy_is_the_held_out_accuracy(done, Path(done["output_dir"]) / "round.yaml")
    assert done["metrics"]["dpo_eval_reward_accuracy"] is not None
    assert Path(done["logs_path"]).is_file() and lineage["eval"]["path"].endswith("summary.json")
    snapshot_rows = (server.snapshot_dir / name / done["snapshot"] / "pairs.jsonl").read_text().splitlines()
    assert len(snapshot_rows) == 40


def _assert_rm_accuracy_is_the_held_out_accuracy(done: dict, round_yaml: Path) -> None:
    """The round's recorded RM accuracy is the one in its artifacts, and it is what the trained RM scores on the
    held-out pairs the reward stage split off (the file whose hash its manifest records), scored here one pair at
    a time: chosen above rejected counts 1, a tie (|margin| < 1e-4) 1/2."""
    from alignment.data.snapshot import content_hash
    from alignment.precision import inference_dtype
    from reward_models.learned import LearnedRewardModel

    recorded = done["metrics"]["rm_heldout_accuracy"]
    reward = Path(done["lineage"]["reward"]["path"])
    manifest = json.loads((reward / "MANIFEST.json").read_text())
    summary = json.loads((Path(done["output_dir"]) / "summary.json").read_text())
    assert recorded == summary["rm_heldout_accuracy"] == manifest["metrics"]["heldout_accuracy"]
    data = Path(done["output_dir"]) / ".work" / "reward" / "data"
    held_out_path = data / "train_eval.jsonl"
    held_out = [json.loads(line) for line in held_out_path.read_text().splitlines()]
    assert content_hash(held_out) == manifest["data"]["train_eval"]  # the split the stage recorded
    assert len(held_out) == manifest["metrics"]["heldout_pairs"] == 10  # 40 pairs, eval_fraction 0.25
    dtype = yaml.safe_load(round_yaml.read_text())["model"]["dtype"]
    rm = LearnedRewardModel(reward, batch_size=1, dtype=inference_dtype(dtype))
    credit = 0.0
    for row in held_out:
        chosen, rejected = (
            float(rm.raw_score([row["prompt"]], [row[k][-1]["content"]])[0]) for k in ("chosen", "rejected")
        )
        credit += 0.5 if abs(chosen - rejected) < 1e-4 else float(chosen > rejected)
    assert recorded == pytest.approx(credit / len(held_out), abs=1e-9)
