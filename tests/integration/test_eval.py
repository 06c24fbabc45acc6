"""`alignment eval` on the accelerator's processes and in the run's precision, through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import REPO, run_cli

pytestmark = pytest.mark.integration

PROMPTS = [
    "--prompts",
    "builtin:tasks",
    "--prompts-option",
    "split=test",
    "--prompts-option",
    "task_count=10",
]


def _eval(policy: Path, out: Path, *extra: str) -> tuple[dict, list[dict]]:
    result = run_cli(
        "eval", "--policy", str(policy), *PROMPTS, "--gold", "rule:tasks", "--max-new-tokens", "8",
        "--samples-per-prompt", "2", "--batch-size", "4", "--tracking", "disabled", "--out", str(out), *extra,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return json.loads((out / "eval.json").read_text()), records


def test_two_processes_share_the_prompts_and_gather_every_response_once(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    greedy = ("--temperature", "0", "--dtype", "float32")
    alone, alone_records = _eval(tiny_model_dir, tmp_path / "one", *greedy)
    launched = ("--accelerate-config", str(REPO / "configs" / "accelerate" / "cpu_ddp.yaml"))
    shared, shared_records = _eval(tiny_model_dir, tmp_path / "two", *greedy, *launched)
    assert alone["processes"] == 1 and alone["responses_per_process"] == [20]
    assert shared["processes"] == 2 and shared["responses_per_process"] == [10, 10]  # each drew half
    assert [r["prompt_index"] for r in shared_records] == [i for i in range(10) for _ in range(2)]
    # greedy: the same tokens whichever process drew them, gathered back into prompt order
    assert [r["response_ids"] for r in shared_records] == [r["response_ids"] for r in alone_records]
    assert shared["metrics"]["gold"] == alone["metrics"]["gold"]


def test_eval_loads_the_policy_in_the_dtype_the_cpu_computes_fast(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    import torch

    from alignment.precision import bf16_units

    result, records = _eval(tiny_model_dir, tmp_path / "auto", "--dtype", "auto", "--backend", "hf")
    fast, why = bf16_units(torch.device("cpu"))
    assert result["engine"] == {"backend": "hf", "dtype": "bfloat16" if fast else "float32"}, why
    assert len(records) == 20 and all(0 < len(r["response_ids"]) <= 8 for r in records)
