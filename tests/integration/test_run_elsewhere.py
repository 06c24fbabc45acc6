"""A shipped config run for real from a directory that is not the repository: its paths resolve from the config
file, its outputs land in the current directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, run_cli

pytestmark = pytest.mark.integration


def test_shipped_smoke_config_runs_from_a_temporary_directory(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = REPO / "configs" / "pipelines" / "smoke.yaml"
    result = run_cli("run", str(config), "stages=[sft]", "sft.max_steps=2", "sft.save_steps=2", cwd=tmp_path)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    assert result.stdout.startswith("W&B: offline (WANDB_MODE=offline); sync later: wandb sync ")
    run_dir = tmp_path / "runs" / "smoke"
    assert (run_dir / "sft" / "MANIFEST.json").is_file()
    resolved = yaml.safe_load((run_dir / "sft" / "resolved_config.yaml").read_text())
    assert resolved["accelerate_config"] == str(REPO / "configs" / "accelerate" / "cpu.yaml")
    assert resolved["output_dir"] == str(run_dir)
