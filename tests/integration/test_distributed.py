"""The unchanged SFT stage under `accelerate launch` with 2 CPU processes: DDP (gloo), DeepSpeed ZeRO-2 and ZeRO-3.

The shipped GPU accelerate configs are used as they are; only `--num_processes 2 --mixed_precision no` is
overridden on the command line, as a user would on a CPU box.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.helpers import REPO, accelerate_launch, run_cli, write_config

pytestmark = pytest.mark.integration

CPU_OVERRIDES = ("--num_processes", "2", "--mixed_precision", "no")


@pytest.fixture(scope="module")
def single_process_shapes(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, tuple]:
    tmp = tmp_path_factory.mktemp("single")
    config = write_config(tmp)
    result = run_cli("stage", "sft", "--config", str(config), "sft.max_steps=4")
    assert result.returncode == 0, result.stderr[-3000:]
    return _load_in_fresh_process(tmp / "run" / "sft")


def _load_in_fresh_process(artifact: Path) -> dict[str, tuple]:
    """Load with from_pretrained in a new process (never inside a ZeRO-3 process) and report shapes + a forward."""
    code = (
        "import json, sys, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1], use_safetensors=True)\n"
        "out = m(input_ids=torch.tensor([[1, 2, 3]])).logits\n"
        "assert torch.isfinite(out).all()\n"
        "print(json.dumps({k: list(v.shape) for k, v in m.state_dict().items()}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(artifact)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return {k: tuple(v) for k, v in json.loads(result.stdout.strip().splitlines()[-1]).items()}


@pytest.mark.parametrize(
    ("accelerate_config", "extra"),
    [
        ("cpu_ddp.yaml", ()),
        ("zero2.yaml", CPU_OVERRIDES),
        ("zero3.yaml", CPU_OVERRIDES),
    ],
    ids=["ddp", "zero2", "zero3"],
)
def test_sft_under_accelerate_launch(
    tmp_path: Path, accelerate_config: str, extra: tuple[str, ...], single_process_shapes: dict[str, tuple]
) -> None:
    config = write_config(tmp_path)
    result = accelerate_launch(
        accelerate_config, "alignment.stages.sft", "--config", str(config), "sft.max_steps=4", extra=extra
    )
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-5000:])
    artifact = tmp_path / "run" / "sft"
    manifest = json.loads((artifact / "MANIFEST.json").read_text())
    assert manifest["world_size"] == 2
    assert manifest["metrics"]["global_step"] == 4
    # printed once, by the main process
    assert result.stdout.count("[sft] artifact:") == 1
    # the weights reload (fresh process: never inside a ZeRO-3 context) with the 1-process run's shapes
    assert _load_in_fresh_process(artifact) == single_process_shapes
    saved = load_file(artifact / "model.safetensors")
    assert all(tensor.numel() > 0 for tensor in saved.values()), "empty (still sharded) tensors were saved"
