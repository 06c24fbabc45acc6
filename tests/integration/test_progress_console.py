"""`alignment run` shows each stage's progress on a non-interactive console, and the log keeps everything."""

from __future__ import annotations

import json
import re

from tests.helpers import run_cli


def test_a_smoke_sft_run_prints_step_lines_and_keeps_the_full_log(tmp_path):
    out = tmp_path / "run"
    result = run_cli(
        "run",
        "configs/pipelines/smoke.yaml",
        "stages=[sft]",
        f"output_dir={out}",
        env={"ALIGNMENT_PROGRESS_INTERVAL": "0", "WANDB_MODE": "offline", "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    console = result.stdout
    steps = [
        int(k) for k in re.findall(r"^\[1/1\] sft  step (\d)/8  loss \d+\.\d{3}  \d:\d\d", console, re.M)
    ]
    assert steps == list(range(1, 9)), console  # interval 0: a line per logging step (logging_steps: 1)
    assert re.search(r"step 7/8  loss \S+  \d:\d\d < \d:\d\d", console)  # elapsed < ETA
    log = (out / "logs" / "sft.log").read_text()
    assert log.startswith("$ ") and "'loss'" in log  # the trainer's own log lines stay in the file
    assert "'loss'" not in console
    events = [json.loads(line) for line in (out / "logs" / "sft.progress.jsonl").read_text().splitlines()]
    assert [event["step"] for event in events] == list(range(1, 9))
    assert all(event["total"] == 8 for event in events)
