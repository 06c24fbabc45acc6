"""bench/gpu.sh (its dry run: the commands it would run) and the random ~0.6B model it benchmarks."""

from __future__ import annotations

import shlex
import subprocess

import torch

from tests.helpers import REPO


def _dry_run(*args: str) -> list[list[str]]:
    result = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu.sh"), "--dry-run", "--python", "PY", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")]


def test_gpu_script_parses() -> None:
    result = subprocess.run(["bash", "-n", str(REPO / "bench" / "gpu.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_gpu_dry_run_prepares_the_model_then_benchmarks_three_layouts() -> None:
    commands = _dry_run("--steps", "3", "--out", "/tmp/gpu")
    assert commands[0] == ["PY", "-m", "bench.model", "prepare"]
    bench = commands[1:]
    assert len(bench) == 3
    common = ["PY", "-m", "bench", "stages", "--models", "llama0.6b", "--stages", "sft,reward,dpo,ppo,grpo"]
    for command in bench:
        assert command[: len(common)] == common
        assert command[command.index("--steps") + 1] == "3"
        assert "--plain-trl" in command
    assert "--accelerate-config" not in bench[0]
    assert bench[0][-2:] == ["--out", "/tmp/gpu/single"]
    for command, layout in zip(bench[1:], ("zero2", "zero3"), strict=True):
        config = command[command.index("--accelerate-config") + 1]
        assert config == f"configs/accelerate/{layout}.yaml"
        assert (REPO / config).is_file()
        assert command[command.index("--num-processes") + 1] == "1"
        assert command[-2:] == ["--out", f"/tmp/gpu/{layout}"]


def test_gpu_dry_run_honours_layouts_and_stages() -> None:
    commands = _dry_run("--layouts", "zero3", "--stages", "sft,grpo")
    assert len(commands) == 2
    assert "configs/accelerate/zero3.yaml" in commands[1]
    assert commands[1][commands[1].index("--stages") + 1] == "sft,grpo"


def test_gpu_script_refuses_an_unknown_layout() -> None:
    result = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu.sh"), "--dry-run", "--layouts", "zero9"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "unknown layout zero9" in result.stderr


def test_random_llama_0_6b_has_between_half_and_one_billion_parameters() -> None:
    from transformers import LlamaForCausalLM

    from alignment.models import chatml_gpt2_tokenizer
    from bench import model as bench_model

    config = bench_model.config(chatml_gpt2_tokenizer())
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    parameters = sum(p.numel() for p in model.parameters())
    assert 0.5e9 <= parameters <= 1.0e9, parameters
    assert config.tie_word_embeddings


def test_bench_stages_knows_the_gpu_model_and_its_pipeline() -> None:
    from alignment.config import load_pipeline
    from bench.stages import MODELS

    pipeline = load_pipeline(REPO / MODELS["llama0.6b"])
    assert pipeline.model.name_or_path == "random-llama-0.6b"
    assert set(pipeline.stage_sections) >= {"sft", "reward", "dpo", "ppo", "grpo"}


def test_bench_builds_its_own_model_and_points_the_run_at_it(tmp_path, monkeypatch) -> None:
    """The benchmark model is not embedded in the product: bench/model.py builds it (here at a tiny shape) and
    `bench stages` sets its folder as the run's model."""
    from transformers import AutoConfig

    from alignment.models import EMBEDDED_MODELS
    from bench import model as bench_model
    from bench.stages import model_overrides

    assert bench_model.NAME not in EMBEDDED_MODELS
    monkeypatch.setenv("ALIGNMENT_HOME", str(tmp_path))
    tiny = {**bench_model.SHAPE, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1}
    monkeypatch.setattr(bench_model, "SHAPE", {**tiny, "num_attention_heads": 4, "num_key_value_heads": 2})
    folder = bench_model.prepare()
    assert folder == tmp_path / "bench-models" / "random-llama-0.6b"
    config = AutoConfig.from_pretrained(folder)
    assert (config.hidden_size, config.num_hidden_layers, config.dtype) == (64, 1, torch.bfloat16)
    assert model_overrides("llama0.6b") == [f"model.name_or_path={folder}"]
    assert model_overrides("tiny") == []
