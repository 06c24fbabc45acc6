"""SFT on canonical prompt/completion rows trains on completion tokens only; packing keeps that mask."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.parametrize("packing", [False, True])
def test_labels_cover_only_the_completion(tiny_model_dir: Path, tmp_path: Path, packing: bool) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from alignment.stages.sft import _columns

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [
        {
            "prompt": [{"role": "user", "content": "What is 2 plus 2?"}],
            "completion": [{"role": "assistant", "content": "4"}],
        },
        {
            "prompt": [{"role": "user", "content": "Say hi"}],
            "completion": [{"role": "assistant", "content": "hi there"}],
        },
    ]
    args = SFTConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        use_cpu=True,
        bf16=False,
        report_to=[],
        packing=packing,
        max_length=64,
        activation_checkpointing=False,
    )
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        args=args,
        train_dataset=Dataset.from_list(_columns(rows)),
        processing_class=tokenizer,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    labels = batch["labels"].flatten().tolist()
    trained = tokenizer.decode([t for t in labels if t != -100])
    # only the assistant replies (and their end-of-turn tokens) carry loss
    assert "4" in trained and "hi there" in trained
    assert "What is 2 plus 2" not in trained and "Say hi" not in trained and "user" not in trained


@pytest.mark.parametrize(
    ("settings", "attn", "warns"),
    [
        ({"packing": True}, "sdpa", True),  # TRL's default packing strategy is bfd: padding-free
        ({"packing": True, "packing_strategy": "bfd_split"}, "eager", True),
        ({"padding_free": True}, "sdpa", True),
        ({"packing": True}, "flash_attention_2", False),
        ({"packing": True, "packing_strategy": "wrapped"}, "sdpa", False),
        ({"packing": False}, "sdpa", False),
    ],
)
def test_padding_free_without_flash_attention_is_warned_about(
    tmp_path: Path, settings: dict, attn: str, warns: bool
) -> None:
    from trl import SFTConfig

    from alignment.stages.sft import padding_free_warning

    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], **settings)
    warning = padding_free_warning(args, attn)
    assert (warning is not None) == warns
    if warns:
        assert attn in warning and "packing_strategy=wrapped" in warning and "flash_attention_2" in warning
