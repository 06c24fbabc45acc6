"""Direct Preference Optimisation from the SFT artifact, over TRL 1.16's `DPOTrainer`.

DPO (Rafailov et al., 2023, eq. 7): L = -log sigmoid(beta * [(log pi(y_w|x) - log ref(y_w|x)) -
(log pi(y_l|x) - log ref(y_l|x))]). Every TRL loss variant is one config key away (`dpo.loss_type: ipo`, `hinge`,
`robust`, `apo_zero`, ...; a list combines them with `loss_weights`), and `dpo.beta=0.05` sweeps beta.

The reference is the SFT artifact: with LoRA the policy with its adapter disabled (no second copy in memory),
with full fine-tuning a frozen copy loaded from the SFT artifact, or its log-probs computed once up front
(`precompute_ref_log_probs: true`). `reference_from` anchors to another artifact than `init_from` (a frozen copy),
e.g. the SFT policy while an iterative round trains on from the previous round's policy.

Assumptions (each tested): rows are canonical conversational preference pairs; over-long pairs are rejected and
reported, never truncated; a re-run resumes from the latest complete checkpoint with identical losses.

Launch:
    accelerate launch --config_file configs/accelerate/zero3.yaml -m alignment.stages.dpo \\
        --config configs/pipelines/smoke.yaml dpo.beta=0.05
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alignment.config import PipelineConfig
from alignment.lm_head import use_dense_lm_heads
from alignment.models import apply_freeze, count_parameters, load_causal_lm, peft_config_for
from alignment.stages.common import (
    StageRun,
    execute,
    resolve_reference,
    save_policy_weights,
    stage_callbacks,
    stage_main,
    start_from_init,
)
from alignment.stages.reward import token_length_fn

logger = logging.getLogger("alignment.dpo")

STAGE = "dpo"


def _columns(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]} for row in rows]


def build(pipeline: PipelineConfig, run: StageRun) -> tuple[Any, str | None]:
    from datasets import Dataset
    from transformers import set_seed
    from trl import DPOTrainer

    resume_from, init_path, model_cfg, args, tokenizer = start_from_init(pipeline, run, STAGE)

    train_rows, eval_rows = run.load_train_eval(args, "preference", token_length_fn(tokenizer))

    set_seed(args.seed)  # adapters and resized embeddings start the same on every run
    model = load_causal_lm(model_cfg, init_path, tokenizer)
    apply_freeze(model, model_cfg.tuning)
    peft_config = peft_config_for(model_cfg.tuning)
    reference_path = resolve_reference(pipeline, run, STAGE, args.reference_from)
    ref_model = None  # LoRA: adapter disabled; full: TRL makes a frozen copy of the init model
    if reference_path is not None:
        ref_model = (
            load_causal_lm(model_cfg, reference_path, tokenizer, frozen=True).eval().requires_grad_(False)
        )
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=Dataset.from_list(_columns(train_rows)),
        eval_dataset=Dataset.from_list(_columns(eval_rows)) if eval_rows else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=stage_callbacks(run),
    )
    use_dense_lm_heads(trainer, STAGE)  # on CPU: TRL's tiled LM-head fallback is about 2x slower
    trainable, total = count_parameters(trainer.model)
    reference = (
        f"frozen copy of {reference_path}"
        if reference_path is not None
        else "adapter disabled"
        if peft_config is not None
        else ("precomputed log-probs" if args.precompute_ref_log_probs else f"frozen copy of {init_path}")
    )
    logger.info(
        "[dpo] from %s: %d / %d parameters trainable (%s); reference: %s; loss %s, beta %s",
        init_path,
        trainable,
        total,
        model_cfg.tuning.method,
        reference,
        args.loss_type,
        args.beta,
    )
    run.model_cfg = model_cfg  # type: ignore[attr-defined]
    return trainer, resume_from


def _finish(trainer: Any, run: StageRun, metrics: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return save_policy_weights(trainer, run, run.model_cfg), {}  # type: ignore[attr-defined]


def train(pipeline: PipelineConfig, force: bool = False, restart: bool = False) -> Path:
    return execute(pipeline, STAGE, build, _finish, force, restart)


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
