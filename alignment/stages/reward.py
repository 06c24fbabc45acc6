"""Reward model: a Bradley-Terry scorer trained on preference pairs, over TRL 1.16's `RewardTrainer`.

Loss (Bradley & Terry, 1952; Ouyang et al., 2022, eq. 1): L = -log sigmoid(r(x, y_chosen) - r(x, y_rejected)),
optionally minus a per-pair margin (Touvron et al., 2023). The RM is a sequence-classification head with one
output on top of the initial model: by default this pipeline's SFT artifact, as in InstructGPT.

The artifact holds the RM (always full weights: adapters are merged so any consumer loads it with plain
`from_pretrained`), its tokenizer, `normalization.json` (mean/std of its scores on a reference set) and the
diagnostics report `diagnostics.json` / `diagnostics.md` on held-out pairs (reward_models.diagnostics).

Assumptions (each tested): rows are canonical conversational preference pairs; pairs longer than `max_length`
are rejected and reported (TRL would drop them silently); a re-run resumes from the latest complete checkpoint.

Launch:
    accelerate launch --config_file configs/accelerate/zero2.yaml -m alignment.stages.reward \\
        --config configs/pipelines/smoke.yaml
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

from alignment.config import ConfigError, PipelineConfig
from alignment.models import (
    apply_freeze,
    count_parameters,
    peft_config_for,
)
from alignment.stages.common import (
    StageRun,
    execute,
    merge_adapter,
    stage_callbacks,
    stage_main,
    start_from_init,
)

logger = logging.getLogger("alignment.reward")

STAGE = "reward"


def _columns(rows: list[dict[str, Any]], use_margin: bool) -> list[dict[str, Any]]:
    keep = ("prompt", "chosen", "rejected", "margin") if use_margin else ("prompt", "chosen", "rejected")
    return [{key: row[key] for key in keep} for row in rows]


def token_length_fn(tokenizer: Any):
    """Length of the longer side of a pair, as the RM sees it (chat template of prompt + reply)."""

    def token_length(row: dict[str, Any]) -> int:
        return max(
            len(tokenizer.apply_chat_template(row["prompt"] + row[side], tokenize=True, return_dict=False))
            for side in ("chosen", "rejected")
        )

    return token_length


def build(pipeline: PipelineConfig, run: StageRun) -> tuple[Any, str | None]:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, set_seed
    from trl import RewardTrainer

    resume_from, init_path, model_cfg, args, tokenizer = start_from_init(pipeline, run, STAGE)

    train_rows, eval_rows = run.load_train_eval(args, "preference", token_length_fn(tokenizer))
    if not eval_rows:
        raise ConfigError(
            "reward: no held-out pairs for the diagnostics; set reward.data.eval_fraction or eval_data"
        )
    if args.use_margin and any("margin" not in row for row in train_rows):
        raise ConfigError("reward.use_margin=true but some training pairs carry no `margin` field")

    from alignment.models import torch_dtype

    if model_cfg.tuning.method in ("lora", "qlora", "ia3") and _zero3():
        raise ConfigError(
            "reward: adapters are merged into the published RM, which needs whole weights; under ZeRO-3 use "
            "model.tuning.method=full or freeze, or ZeRO-2"
        )
    set_seed(args.seed)  # the new score head's initialisation is part of the experiment
    model = AutoModelForSequenceClassification.from_pretrained(
        init_path,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
        dtype=torch_dtype(model_cfg.dtype),
        use_safetensors=True,
        trust_remote_code=model_cfg.trust_remote_code,
    )
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    apply_freeze(model, model_cfg.tuning)
    peft_config = peft_config_for(model_cfg.tuning, task_type="SEQ_CLS")

    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(_columns(train_rows, args.use_margin)),
        # The held-out pairs are scored once, by the diagnostics after training; the trainer evaluates them
        # too only when the config asks for evaluation during training.
        eval_dataset=Dataset.from_list(_columns(eval_rows, False)) if args.eval_strategy != "no" else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=stage_callbacks(run),
    )
    trainable, total = count_parameters(trainer.model)
    logger.info(
        "[reward] from %s: %d / %d parameters trainable (%s)",
        init_path,
        trainable,
        total,
        model_cfg.tuning.method,
    )
    run.init_path = init_path  # type: ignore[attr-defined]
    return trainer, resume_from


def _zero3() -> bool:
    from transformers.integrations import is_deepspeed_zero3_enabled

    return bool(is_deepspeed_zero3_enabled())


def _diagnose_in_fresh_process(run: StageRun, args: Any, init_path: str) -> None:
    """Held-out diagnostics + normalisation statistics, written into the staging dir (see reward_models.check)."""
    data_dir = run.work_dir / "data"
    held_out = data_dir / ("eval.jsonl" if (data_dir / "eval.jsonl").is_file() else "train_eval.jsonl")
    command = [
        sys.executable,
        "-m",
        "reward_models.check",
        "--rm",
        str(run.staging),
        "--data",
        str(held_out),
        "--out",
        str(run.staging),
        "--batch-size",
        str(args.diagnostics_batch_size),
        "--normalization",
        args.normalization,
        "--normalization-data",
        str(data_dir / "train.jsonl"),
        "--normalization-samples",
        str(args.normalization_samples),
        "--name",
        str(run.output_dir),
        "--policy",
        init_path,
        "--seed",
        str(args.seed),
        "--backend",
        args.generation.backend,
        "--dtype",
        run.pipeline.model.dtype,  # the RM as policy stages load it: its statistics fit its scores there
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"reward diagnostics failed:\n{result.stderr[-4000:]}")
    print(result.stdout, end="", flush=True)


def _finish(trainer: Any, run: StageRun, metrics: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    _save_merged(trainer, run)
    if run.is_main:
        _diagnose_in_fresh_process(run, trainer.args, run.init_path)  # type: ignore[attr-defined]
        diagnostics = json.loads((run.staging / "diagnostics.json").read_text())
        metrics["heldout_accuracy"] = diagnostics["accuracy"]
        metrics["heldout_accuracy_ci95_low"] = diagnostics["accuracy_ci95"][0]
        metrics["heldout_accuracy_ci95_high"] = diagnostics["accuracy_ci95"][1]
        metrics["heldout_pairs"] = diagnostics["n_pairs"]
        metrics["length_spearman"] = diagnostics["length_spearman"]
    return "full", {}


def train(pipeline: PipelineConfig, force: bool = False, restart: bool = False) -> Path:
    return execute(pipeline, STAGE, build, _finish, force, restart)


def _save_merged(trainer: Any, run: StageRun) -> None:
    """Every rank saves (ZeRO-3 gathers); adapters are then merged on the main process into plain weights."""
    import peft

    trainer.save_model(str(run.staging))
    model = trainer.accelerator.unwrap_model(trainer.model)
    if run.is_main and isinstance(model, peft.PeftModel):
        merge_adapter(model, run.staging)
    run.state.wait_for_everyone()


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
