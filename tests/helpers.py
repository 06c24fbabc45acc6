"""Helpers for tests: shipped configs rewritten into tmp dirs, the real CLI and accelerate launch in subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ALIGNMENT_DATA_DIR", REPO.parent / "shared" / "data"))
KILLED = -signal.SIGKILL
"""The return code of a stage that `fault(...)` killed (subprocess reports death by a signal as its negative)."""


def fault(point: str) -> dict[str, str]:
    """The environment that SIGKILLs a stage at `point` (`checkpoint-written:8`, `publishing`, ...; see
    alignment.artifacts.FAULT_POINTS)."""
    return {"ALIGNMENT_FAULT_AT": point}


def write_config(tmp_path: Path, base: str = "smoke.yaml", **updates: object) -> Path:
    """A copy of a shipped pipeline config with output_dir in tmp_path and dotted-key updates applied."""
    config = yaml.safe_load((REPO / "configs" / "pipelines" / base).read_text())
    config["output_dir"] = str(tmp_path / "run")
    for dotted, value in updates.items():
        node = config
        parts = dotted.split("__")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_cli(
    *args: str, cwd: Path = REPO, timeout: int = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run `python -m alignment.cli ...` (the console script's entry point) in a fresh process."""
    merged = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "alignment.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=merged,
        check=False,
    )


def run_cli_in_process(capsys: object, *args: str) -> tuple[int, str, str]:
    """`alignment ARGS` through the CLI's entry point in this process: (exit code, stdout, stderr).

    For commands that only read configs (`--dry-run`): a fresh interpreter costs ~10 s of imports per call. The
    environment is restored afterwards (`compare` sets ALIGNMENT_RUN_ID for its stages).
    """
    from unittest import mock

    from alignment.cli import main

    with mock.patch.dict(os.environ):
        code = main(list(args))
    captured = capsys.readouterr()  # type: ignore[attr-defined]
    return code, captured.out, captured.err


def accelerate_launch(
    config_file: str,
    module: str,
    *args: str,
    extra: tuple[str, ...] = (),
    timeout: int = 900,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    merged = {**os.environ, **(env or {})}
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "configs" / "accelerate" / config_file),
        *extra,
        "-m",
        module,
        *args,
    ]
    return subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=merged, check=False
    )


def logged_losses(artifact: Path) -> list[float]:
    """Per-step training losses recorded in an artifact's log_history.json."""
    import json

    return [
        entry["loss"] for entry in json.loads((artifact / "log_history.json").read_text()) if "loss" in entry
    ]


def tiny_llama_config(**overrides: object) -> object:
    """A small random-weights Llama config for in-process model tests (hidden 32, 4 heads over 2 KV heads)."""
    from transformers import LlamaConfig

    values: dict[str, object] = {
        "vocab_size": 97,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "pad_token_id": 0,
    }
    return LlamaConfig(**(values | overrides))


def rollout_batch(
    columns: int, query_length: int, prompt_padding: list[int], response_ends: list[int | None]
) -> tuple[object, object, object, int]:
    """A rollout-shaped batch of random ids: row i's prompt is left-padded by `prompt_padding[i]` columns and its
    response right-padded from column `response_ends[i]` (None: no padding). Returns ids, attention mask, position
    ids and the query length."""
    import torch

    from alignment.rl.ppo_math import position_ids_from

    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 97, (len(prompt_padding), columns), generator=generator)
    mask = torch.ones_like(ids)
    for row, (padding, end) in enumerate(zip(prompt_padding, response_ends, strict=True)):
        mask[row, :padding] = 0
        if end is not None:
            mask[row, end:] = 0
    ids = ids * mask
    return ids, mask, position_ids_from(mask), query_length
