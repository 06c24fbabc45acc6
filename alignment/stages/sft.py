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
    checkpoint_callback,
    parse_args,
    report_done,
    setup_logging,
    write_log_history,
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


def build(pipeline: PipelineConfig, run: StageRun) -> tuple[Any, str | None]:
    """Model, tokenizer, data and the configured SFTTrainer; returns (trainer, checkpoint to resume)."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTTrainer

    resume_from = run.prepare_work_dir()
    args = stage_args(pipeline, STAGE, **run.training_defaults())
    model_cfg = args.model or pipeline.model
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
    if model_cfg.tuning.merge_on_publish and _zero3(args):
        raise ConfigError("model.tuning.merge_on_publish is not supported under ZeRO-3; publish the adapter")

    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(_columns(train_rows)),
        eval_dataset=Dataset.from_list(_columns(eval_rows)) if eval_rows else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[checkpoint_callback(run)],
    )
    trainable, total = count_parameters(trainer.model)
    logger.info(
        "[sft] %s: %d / %d parameters trainable (%s)", model_path, trainable, total, model_cfg.tuning.method
    )
    run.model_path = model_path  # type: ignore[attr-defined]
    return trainer, resume_from


def _zero3(args: Any) -> bool:
    from transformers.integrations import is_deepspeed_zero3_enabled

    return bool(is_deepspeed_zero3_enabled())


def train(pipeline: PipelineConfig, force: bool = False, restart: bool = False) -> Path:
    """Run the stage; returns the published artifact directory."""
    run = StageRun(pipeline, STAGE, force=force, restart=restart)
    if run.already_complete():
        if run.is_main:
            print(
                f"[sft] complete artifact with the same config exists: {run.output_dir} (use --force to re-run)"
            )
        return run.output_dir
    run.tracker.start(pipeline.resolved())
    exit_code = 1
    try:
        trainer, resume_from = build(pipeline, run)
        if resume_from:
            logger.info("[sft] resuming from %s", resume_from)
        result = trainer.train(resume_from_checkpoint=resume_from)
        metrics: dict[str, Any] = {
            "train_loss": result.training_loss,
            "global_step": result.global_step,
            **{k: v for k, v in result.metrics.items() if k != "total_flos"},
        }
        if trainer.eval_dataset is not None:
            metrics.update(trainer.evaluate())
        model_cfg = trainer.args.model or pipeline.model
        trainer.save_model(str(run.staging))  # every rank: gathers ZeRO-3 shards
        model_kind = "full"
        if run.is_main:
            model_kind = _finish_weights(trainer, run.staging, model_cfg)
            write_log_history(run.staging / "log_history.json", trainer.state.log_history)
        run.inputs = {}
        path = run.publish(metrics, {"model_source.json": {"model": run.model_path}}, model_kind)  # type: ignore[attr-defined]
        report_done(run, path, metrics)
        exit_code = 0
        return path
    finally:
        run.tracker.finish(exit_code)


def _finish_weights(trainer: Any, staging: Path, model_cfg: Any) -> str:
    """Adapter runs publish the adapter (default) or merged weights; full runs are saved as they are."""
    import peft

    model = trainer.accelerator.unwrap_model(trainer.model)
    if not isinstance(model, peft.PeftModel):
        return "full"
    if model_cfg.tuning.merge_on_publish and model_cfg.tuning.method in ("lora", "ia3"):
        merged = model.merge_and_unload()
        for leftover in ("adapter_model.safetensors", "adapter_config.json"):
            (staging / leftover).unlink(missing_ok=True)
        merged.save_pretrained(staging, safe_serialization=True)
        return "merged"
    return "adapter"


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    pipeline, args = parse_args(STAGE, argv)
    train(pipeline, force=args.force, restart=args.restart)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
