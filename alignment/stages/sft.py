"""SFT warmup: supervised fine-tuning on instruction data, over TRL 1.16's `SFTTrainer`.

The first stage of InstructGPT-style RLHF (Ouyang et al., 2022): the policy learns the response format from
demonstrations before any preference optimisation; the SFT artifact is the start of every policy arm and the
frozen reference of DPO and PPO.

Assumptions (each tested in tests/):
- rows are canonical conversational prompt/completion (or plain `text`); the loss covers completion tokens
  only (TRL's completion-only loss for prompt-completion data);
- rows longer than `max_length` tokens are rejected and reported (reason `too_long`), never truncated mid-answer;
- a re-run with the same config resumes from the latest complete checkpoint (same losses as an uninterrupted
  run) and a re-run after completion does nothing;
- the same file runs on 1 process, under DDP, and under DeepSpeed ZeRO-2/3 without change.

Launch:
    accelerate launch --config_file configs/accelerate/cpu_ddp.yaml -m alignment.stages.sft \\
        --config configs/pipelines/smoke.yaml
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alignment.config import ConfigError, PipelineConfig, stage_args
from alignment.lm_head import use_dense_lm_heads
from alignment.models import (
    apply_freeze,
    count_parameters,
    load_causal_lm,
    load_tokenizer,
    peft_config_for,
    resolve_model_path,
)
from alignment.stages.common import (
    StageRun,
    check_tuning,
    execute,
    save_policy_weights,
    stage_callbacks,
    stage_main,
)

logger = logging.getLogger("alignment.sft")

STAGE = "sft"


def _columns(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Only what SFTTrainer consumes: prompt/completion messages, or text."""
    if rows and "text" in rows[0]:
        return [{"text": row["text"]} for row in rows]
    return [{"prompt": row["prompt"], "completion": row["completion"]} for row in rows]


def token_length_fn(tokenizer: Any):
    def token_length(row: dict[str, Any]) -> int:
        if "text" in row:
            return len(tokenizer(row["text"])["input_ids"])
        ids = tokenizer.apply_chat_template(
            row["prompt"] + row["completion"], tokenize=True, return_dict=False
        )
        return len(ids)

    return token_length


def padding_free_warning(args: Any, attn_implementation: str | None) -> str | None:
    """Why this run's padding-free batches will be slow, or None. TRL trains padding-free (each batch flattened
    into one row) with `padding_free` or with `bfd` packing; only FlashAttention's variable-length kernels attend
    within each sequence of that row. Other implementations (sdpa, eager) are given a block-diagonal mask over the
    whole flattened row, so attention costs (batch x length)^2 instead of batch x length^2."""
    packed_free = args.packing and args.packing_strategy in ("bfd", "bfd_split")
    if not (args.padding_free or packed_free) or str(attn_implementation or "").startswith("flash_attention"):
        return None
    how = f"packing_strategy={args.packing_strategy}" if packed_free else "padding_free=true"
    return (
        f"sft: {how} trains padding-free (each batch of {args.per_device_train_batch_size} flattened into one row), "
        f"and with attn_implementation={attn_implementation or 'sdpa'} attention runs over the whole flattened row "
        "(quadratic in batch x max_length). With FlashAttention set model.attn_implementation=flash_attention_2; "
        "without it, sft.packing_strategy=wrapped (dense rows; a sequence may attend to the one before it) or "
        "sft.packing=false is faster (docs/BENCHMARKS.md, SFT at 512 tokens)."
    )


def build(pipeline: PipelineConfig, run: StageRun) -> tuple[Any, str | None]:
    """Model, tokenizer, data and the configured SFTTrainer; returns (trainer, checkpoint to resume)."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTTrainer

    resume_from = run.prepare_work_dir()
    args = stage_args(pipeline, STAGE, **run.training_defaults())
    model_cfg = args.model or pipeline.model
    check_tuning(model_cfg, STAGE)
    model_path = resolve_model_path(model_cfg.name_or_path)
    tokenizer = load_tokenizer(model_cfg, model_path)

    # Data: never truncate silently; rows over the trainer's max_length are rejected and reported.
    train_rows, eval_rows = run.load_train_eval(args, "sft", token_length_fn(tokenizer))

    set_seed(args.seed)  # adapters and resized embeddings start the same on every run
    model = load_causal_lm(model_cfg, model_path, tokenizer)
    apply_freeze(model, model_cfg.tuning)
    peft_config = peft_config_for(model_cfg.tuning)
    if peft_config is not None and model_cfg.tuning.method == "prompt_tuning" and args.packing:
        raise ConfigError("sft: packing does not combine with prompt_tuning (soft prompts per sequence)")
    warning = padding_free_warning(args, getattr(model.config, "_attn_implementation", None))
    if warning:
        logger.warning(warning)

    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(_columns(train_rows)),
        eval_dataset=Dataset.from_list(_columns(eval_rows)) if eval_rows else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=stage_callbacks(run),
    )
    use_dense_lm_heads(trainer, STAGE)  # on CPU: TRL's tiled LM-head fallback is about 2x slower
    trainable, total = count_parameters(trainer.model)
    logger.info(
        "[sft] %s: %d / %d parameters trainable (%s)", model_path, trainable, total, model_cfg.tuning.method
    )
    run.model_path = model_path  # type: ignore[attr-defined]
    return trainer, resume_from


def _finish(trainer: Any, run: StageRun, metrics: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    model_cfg = trainer.args.model or run.pipeline.model
    kind = save_policy_weights(trainer, run, model_cfg)
    return kind, {"model_source.json": {"model": run.model_path}}  # type: ignore[attr-defined]


def train(pipeline: PipelineConfig, force: bool = False, restart: bool = False) -> Path:
    """Run the stage; returns the published artifact directory."""
    return execute(pipeline, STAGE, build, _finish, force, restart)


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
