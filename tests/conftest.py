"""Shared test setup: offline hub, offline W&B, a private ALIGNMENT_HOME with the tiny model prepared once."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# tests/vllm runs in the vLLM venv (`make test` runs it there: see tests/vllm/conftest.py).
collect_ignore = [] if importlib.util.find_spec("vllm") else ["vllm"]

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ALIGNMENT_DATA_DIR", REPO.parent / "shared" / "data"))

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def alignment_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Embedded models are prepared into a per-session cache (tiny-random-llama takes a few seconds)."""
    reuse = os.environ.get("ALIGNMENT_TEST_HOME")  # set it to keep prepared models between local runs
    home = Path(reuse) if reuse else tmp_path_factory.mktemp("alignment_home")
    os.environ["ALIGNMENT_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def tiny_model_dir(alignment_home: Path) -> Path:
    from alignment.models import prepare_embedded

    return prepare_embedded("tiny-random-llama")


@pytest.fixture(scope="module")
def slurm_conf() -> Iterator[Path]:
    """A real single-node Slurm of the test module's own (tests/service/slurm.py): the path of its slurm.conf."""
    from tests.service.slurm import TemporarySlurm

    try:
        cluster = TemporarySlurm()
        conf = cluster.__enter__()
    except RuntimeError as error:
        pytest.fail(str(error))
    try:
        yield conf
    finally:
        cluster.__exit__()
