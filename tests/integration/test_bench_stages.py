"""`python -m bench stages --plain-trl` end to end on the tiny model: our stage and plain TRL did the same work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.integration


def test_bench_stages_reports_both_arms_with_matching_tokens_and_a_ratio(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    out = tmp_path / "bench"
    command = [
        sys.executable, "-m", "bench", "stages", "--models", "tiny", "--stages", "sft,dpo", "--steps", "2",
        "--plain-trl", "--out", str(out),
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=900, env=os.environ, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "result.json").read_text())
    assert report["mfu_against"] == "fp32" and report["peak_fp32_flops"] > 0
    assert [run["stage"] for run in report["runs"]] == ["sft", "dpo"]
    for run in report["runs"]:
        plain = run["plain_trl"]
        assert run["num_tokens"] > 0
        assert plain["num_tokens"] == run["num_tokens"], (run["stage"], plain["same_work"])
        assert run["samples"] == plain["samples"] == 2 * 4  # 2 steps of 4 rows
        assert plain["ratio_ours_over_plain"] == pytest.approx(run["tokens_per_s"] / plain["tokens_per_s"])
        assert 0 < run["mfu"] < 1 and 0 < plain["mfu"] < 1
        assert f"[plain-trl {run['stage']}] num_tokens match" in result.stdout
    # the plain arm trained on the rows our data layer produced, exported beside its settings
    settings = json.loads((out / "tiny" / "plain" / "dpo" / "settings.json").read_text())
    assert settings["model"] == str(out / "tiny" / "sft")
    rows = (out / "tiny" / "plain" / "dpo" / "rows.jsonl").read_text().splitlines()
    snapshot = (out / "tiny" / ".work" / "dpo" / "data" / "train.jsonl").read_text().splitlines()
    assert len(rows) == len(snapshot) > 0
    assert "| tiny | dpo | full |" in result.stdout
